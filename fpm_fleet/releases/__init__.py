"""fpm_fleet/releases"""
