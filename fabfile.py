"""fpm-fleet tasks: run `fab --list`. Everything lives in the tasks/ package."""

from tasks import collection

ns = collection()
