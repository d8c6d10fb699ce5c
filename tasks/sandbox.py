"""`fab sandbox.up` / `fab sandbox.down`: the local test fleet."""

from __future__ import annotations

import time
from pathlib import Path

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from fpm_fleet.core.errors import FleetError

# The sandbox modules (and through them provisioning, Jinja2, the templates) and the output
# (rich) are imported
# by these tasks when they run: every `fab` run imports this module, and start-up is on the
# path of every deploy.

DEFAULT_DIR = "sandbox"


@task(help={"hosts": "how many hosts (Debian 12 containers with systemd)",
            "dir": "sandbox directory",
            "release": "name of the demo release deployed first",
            "bare": "only boot the hosts (fresh Debian servers): no setup, no deploy",
            "strategy": "the pool's strategy: surge (default) or rolling",
            "web": "the hosts' web server: apache (default), nginx, or mixed (in turn)"})
def up(c: Context, hosts: int = 3, dir: str = DEFAULT_DIR, release: str = "v1",
       bare: bool = False, strategy: str = "surge", web: str = "apache") -> None:
    """Boot N Debian 12 hosts (systemd), provision them, deploy the demo app."""
    from fpm_fleet import output
    from fpm_fleet.sandbox import fleet as local_fleet
    from fpm_fleet.sandbox import hosts as sandbox
    started = time.monotonic()
    try:
        with sandbox.exclusive():
            fleet = local_fleet.bring_up(Path(dir).resolve(), hosts, None if bare else release,
                                         strategy, web)
    except FleetError as exc:
        raise Exit(f"error: {exc}", code=exc.exit_code) from None
    output.note(f"sandbox up: {len(fleet.hosts)} hosts in {time.monotonic() - started:.1f}s; "
                f"inventory {fleet.path}", "bold green")
    for h in fleet.hosts:
        output.out.print(f"{h.name}  http://{h.address}/ping.php")


@task(help={"dir": "sandbox directory",
            "purge": "also remove the cached base tree of the hosts (rebuilt by the next up)"})
def down(c: Context, dir: str = DEFAULT_DIR, purge: bool = False) -> None:
    """Power off and remove every host: containers, namespaces, mounts, cgroups, files."""
    from fpm_fleet import output
    from fpm_fleet.sandbox import base as sandbox_base
    from fpm_fleet.sandbox import hosts as sandbox
    base = Path(dir).resolve()
    try:
        sandbox.require_root()
        with sandbox.exclusive():
            removed = sandbox.down(base)
            if purge:
                removed += sandbox_base.purge()
    except FleetError as exc:
        raise Exit(f"error: {exc}", code=exc.exit_code) from None
    for line in removed or ["nothing to remove"]:
        output.note(line)
    left = sandbox.leftovers(base)
    if left:
        raise Exit("left behind: " + "; ".join(left), code=1)


@task(help={"release": "release name written into every file of the demo app",
            "dest": "where to write it (default: the sandbox pool's source directory)",
            "unhealthy": "make health.php answer 500 (to try the automatic revert)",
            "files": "add this many ~10 KB filler files (upload benchmarks)",
            "asset": "add the release's own hashed stylesheet (the asset fallback)",
            "dir": "sandbox directory"})
def build(c: Context, release: str = "v2", dest: str | None = None, unhealthy: bool = False,
          files: int = 0, asset: bool = False, dir: str = DEFAULT_DIR) -> None:
    """Build the demo application as release NAME, ready for `fab deploy`."""
    from fpm_fleet import output
    from fpm_fleet.sandbox import demo as demo_app
    target = Path(dest) if dest else Path(dir).resolve() / "build" / "www"
    demo_app.build(target, release, healthy=not unhealthy, filler_files=files, asset=asset)
    output.note(f"built demo release {release} in {target}"
                + (" (health.php fails)" if unhealthy else "")
                + (f" with /{demo_app.asset_path(release)}" if asset else ""))


@task(help={"hosts": "how many hosts", "dir": "sandbox directory",
            "web": "the hosts' web server: apache (default), nginx, or mixed"})
def demo(c: Context, hosts: int = 3, dir: str = DEFAULT_DIR, web: str = "apache") -> None:
    """Bring up the sandbox, then deploy release v2 under load and show 0 failed requests."""
    from fpm_fleet.sandbox import fleet as local_fleet
    from fpm_fleet.sandbox import hosts as sandbox
    try:
        with sandbox.exclusive():
            local_fleet.demo(Path(dir).resolve(), hosts, web)
    except FleetError as exc:
        raise Exit(f"error: {exc}", code=exc.exit_code) from None


