"""fpm-fleet: zero-downtime, atomic deploys of PHP applications to PHP-FPM replica pools
behind Apache, over SSH. This module only assembles the invoke Collection.
"""

from __future__ import annotations

from invoke.collection import Collection

from tasks import fleet as cli_fleet
from tasks import history as cli_history
from tasks import releases as cli_deploy
from tasks import sandbox as cli_sandbox
from tasks.boundary import DEFAULT_INVENTORY


def collection() -> Collection:
    ns = Collection()
    for t in (cli_fleet.setup, cli_fleet.sudoers, cli_fleet.check, cli_fleet.list_,
              cli_fleet.status, cli_fleet.start, cli_fleet.stop, cli_fleet.restart,
              cli_fleet.stress):
        ns.add_task(t)
    for t in (cli_deploy.deploy_, cli_deploy.rollback, cli_deploy.releases, cli_deploy.cleanup,
              cli_deploy.unlock):
        ns.add_task(t)
    ns.add_task(cli_history.history_)
    ns.add_collection(Collection("sandbox", cli_sandbox.up, cli_sandbox.down,
                                 cli_sandbox.build, cli_sandbox.demo))
    # FABRIC_INVENTORY=path or FABRIC_STAGE=name (stages/<name>.toml): tasks/boundary.py
    ns.configure({"inventory": DEFAULT_INVENTORY, "stage": ""})
    return ns
