"""fpm-fleet: zero-downtime, atomic deploys of PHP applications to PHP-FPM replica pools,
over SSH. The library; the Invoke tasks that drive it are in the top-level `tasks/`
(ARCHITECTURE.md, "Module map")."""
