"""fpm_fleet/sandbox"""
