"""fpm_fleet/host"""
