"""fpm_fleet/web"""
