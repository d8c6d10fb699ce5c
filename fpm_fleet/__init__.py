"""fpm_fleet"""
