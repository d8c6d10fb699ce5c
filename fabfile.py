"""fpm-fleet tasks: run `fab --list`. The task definitions live in tasks/, the library in
fpm_fleet/."""

from tasks import collection

ns = collection()
