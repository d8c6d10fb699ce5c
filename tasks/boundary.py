"""What every task shares: the inventory from the config, the error boundary, signals.

Every `fab` run imports the task modules before it runs one, so they import only what
parses options and reads the inventory; a task imports the rest of fpm-fleet in its body,
once its first hosts are connecting (ARCHITECTURE.md, Start-up).
"""

from __future__ import annotations

import gc
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from invoke.context import Context
from invoke.exceptions import Exit

from fpm_fleet.core import inventory, stages
from fpm_fleet.core.errors import FleetError
from fpm_fleet.core.inventory import Fleet, Host
from fpm_fleet.remote import ssh
from fpm_fleet.remote.ahead import Ahead

# The hosts a task reaches first, from its inventory and options (none: it connects as it
# goes). An error is left for the task to raise, where its errors are reported.
FirstHosts = Callable[[Fleet], tuple[Host, ...]]
EARLY_AT_ONCE = 8  # handshakes at once (a rollback reads every host first, 8 at a time)

DEFAULT_INVENTORY = "hosts.toml"


def inventory_path(c: Context) -> str:
    """Config key `stage` (FABRIC_STAGE=name, or `stage:` in fabric.yaml) chooses
    stages/<name>.toml; else config key `inventory` (FABRIC_INVENTORY=path, or `inventory:`),
    default hosts.toml."""
    return stages.choose(str(c.config.get("inventory", None) or DEFAULT_INVENTORY),
                         str(c.config.get("stage", None) or ""), DEFAULT_INVENTORY)


def load_fleet(c: Context) -> Fleet:
    try:
        return inventory.load(inventory_path(c))
    except FleetError as exc:
        raise Exit(f"error: {exc}", code=exc.exit_code) from None


def stage_line(fleet: Fleet) -> str:
    """Which stage a run acts on, first and last thing it prints (production or staging?)."""
    return f"stage: {stages.stage_name(fleet.path)} ({fleet.path})"


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class Session:
    fleet: Fleet
    log_path: Path
    # connections to the first hosts, opened while the task loaded (None: it connects)
    early: Ahead[ssh.SSHRunner] | None = None


def connect_early(fleet: Fleet, first: FirstHosts | None) -> Ahead[ssh.SSHRunner] | None:
    """Start connecting to the task's first hosts, each in a thread, and return at once."""
    try:
        hosts = first(fleet) if first else ()
    except FleetError:
        return None
    return Ahead(hosts, ssh.early_runner, min(len(hosts), EARLY_AT_ONCE)) if hosts else None


@contextmanager
def boundary(c: Context, command: str, first: FirstHosts | None = None) -> Iterator[Session]:
    """Load the inventory, open the log, turn errors and interrupts into exit codes.

    Once the log exists its path is the last line of every exit: success, a FleetError, an
    interrupt, a task's own Exit (check, status) or a bug, since that is where to look next.
    SIGTERM is handled like Ctrl-C, so a rollout can put its replica back before exiting.
    `first` names the hosts to start connecting to at once (Session.early).
    """
    fleet = load_fleet(c)
    early = connect_early(fleet, first)
    try:
        with _logged(fleet, command) as log_path:
            yield Session(fleet, log_path, early)
    finally:
        if early:
            early.close()
        # what is left is the interpreter's exit, whose last garbage collection walks every
        # object the run made, Fabric's and rich's modules included: 50-70 ms of every run
        # here. Frozen objects are left out of it; the process's memory goes back to the
        # system at its exit either way.
        gc.freeze()


@contextmanager
def _logged(fleet: Fleet, command: str) -> Iterator[Path]:
    from fpm_fleet import output  # rich: loaded while the first hosts connect

    log_path = output.start_log(fleet.log_dir, command)
    output.note(stage_line(fleet), "bold")
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield log_path
    except FleetError as exc:
        output.note(f"error: {exc}", "bold red")
        raise Exit(code=exc.exit_code) from None
    except KeyboardInterrupt:
        output.note("interrupted", "bold red")
        raise Exit(code=130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        output.note(stage_line(fleet), "bold")
        output.note(f"log: {log_path}", "dim")


def command_line() -> str:
    """The command as typed (`fab ...` or `fpm-fleet ...`), for the log and the lock."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
