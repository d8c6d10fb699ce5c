"""fpm_fleet/rollout"""
