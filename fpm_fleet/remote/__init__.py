"""fpm_fleet/remote"""
