"""Zero downtime, measured: the same load on the same fleet during four windows.

1. steady state (nothing happens): the baseline;
2. `fab restart --plain`: fpm-fleet's rolling, drained, health-gated restart;
3. `kill -USR2` to every replica master at once, process_control_timeout = 0 (PHP-FPM's
   default);
4. the same reload with process_control_timeout = 10s.

For 3 and 4 the setting is written into [global] of every replica config (fpm-fleet's own
configs set it to the pool's stop_timeout) and loaded by an unmeasured `fab restart`.
Afterwards the configs are restored and `fab setup` + `fab restart` put the fleet back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fpm_fleet.core.inventory import Fleet

from . import fpmconf, reload, sandbox
from .errors import BenchError
from .load import Window, run_window
from .profile import Profile
from .sandbox import Run

TIMEOUT_KEY = "process_control_timeout"
SCENARIOS = {
    "steady": "steady state (nothing happens)",
    "restart": "fab restart (fpm-fleet, rolling)",
    "steady_surge": "steady state, surge fleet (nothing happens)",
    "restart_surge": "fab restart (fpm-fleet, surge)",
    "deploy_surge": "fab deploy (fpm-fleet, surge)",
    "reload0": "kill -USR2, process_control_timeout=0 (PHP-FPM default)",
    "reload10": "kill -USR2, process_control_timeout=10s",
    "steady_nginx": "steady state, nginx fleet (nothing happens)",
    "restart_nginx": "fab restart (fpm-fleet, surge, nginx)",
    "deploy_nginx": "fab deploy (fpm-fleet, surge, nginx)",
    "reload0_nginx": "kill -USR2 under nginx, process_control_timeout=0",
}
TIMEOUTS = {"reload0": "0", "reload10": "10s", "reload0_nginx": "0"}


@dataclass
class Downtime:
    windows: list[Window] = field(default_factory=list)
    restored: bool = False
    restart_runs: list[Run] = field(default_factory=list)


def run(fleet: Fleet, profile: Profile, say: Callable[[str], None], result: Downtime) -> None:
    """Every scenario, `profile.rounds` times; `result` fills in window by window (so a
    failure half-way keeps what was measured)."""
    for n in range(1, profile.rounds + 1):
        one_round(fleet, profile, say, result, n)


def one_round(fleet: Fleet, profile: Profile, tell: Callable[[str], None], result: Downtime,
              n: int) -> None:
    def say(message: str) -> None:
        tell(f"downtime {n}/{profile.rounds}: {message}")

    rendered = {path: path.read_text() for path in fpmconf.replica_configs(fleet)}
    say(SCENARIOS["steady"])
    steady, _ = run_window(SCENARIOS["steady"], fleet, profile, lambda: None)
    steady.action_detail = "-"
    _add(result, steady, n)
    say(SCENARIOS["restart"])
    window, restart = restart_window(fleet, profile)
    result.restart_runs.append(restart)
    _add(result, window, n)
    sandbox.healthy()
    for key in ("reload0", "reload10"):
        say(SCENARIOS[key])
        with fpmconf.global_setting(fleet, TIMEOUT_KEY, TIMEOUTS[key]):
            sandbox.fab("restart", "--plain")  # the masters load the changed config
            sandbox.healthy()
            _add(result, reload_window(SCENARIOS[key], fleet, profile), n)
        sandbox.healthy()
    say("restoring the replica configs (fab setup, fab restart)")
    result.restored = restore(fleet, rendered)


def _add(result: Downtime, window: Window, n: int) -> None:
    window.round = n
    result.windows.append(window)


def run_surge(fleet: Fleet, profile: Profile, say: Callable[[str], None],
              windows: list[Window], flavour: str = "surge") -> None:
    """The surge strategy on its own fleet: the steady state, `fab restart` and `fab deploy`
    of a new release, `profile.rounds` times each (windows fill in as they come). `flavour`
    names the fleet's scenarios: `surge` (Apache hosts) or `nginx` (nginx hosts)."""
    for n in range(1, profile.rounds + 1):
        for key in (f"steady_{flavour}", f"restart_{flavour}", f"deploy_{flavour}"):
            say(f"{flavour} {n}/{profile.rounds}: {SCENARIOS[key]}")
            window = _surge_window(key, n, fleet, profile)
            window.round = n
            windows.append(window)
            sandbox.healthy()


def run_nginx_reload(fleet: Fleet, profile: Profile, say: Callable[[str], None],
                     windows: list[Window]) -> None:
    """The baseline every nginx shop has: `kill -USR2` of every master (PHP-FPM's default
    process_control_timeout) behind nginx, on a rolling fleet (every slot runs a master);
    the replica configs are put back afterwards, as in `run`."""
    rendered = {path: path.read_text() for path in fpmconf.replica_configs(fleet)}
    key = "reload0_nginx"
    with fpmconf.global_setting(fleet, TIMEOUT_KEY, TIMEOUTS[key]):
        sandbox.fab("restart", "--plain")
        for n in range(1, profile.rounds + 1):
            say(f"nginx {n}/{profile.rounds}: {SCENARIOS[key]}")
            sandbox.healthy()
            window = reload_window(SCENARIOS[key], fleet, profile)
            window.round = n
            windows.append(window)
    sandbox.healthy()
    restore(fleet, rendered)


def _surge_window(key: str, n: int, fleet: Fleet, profile: Profile) -> Window:
    if key.startswith("steady"):
        window, _ = run_window(SCENARIOS[key], fleet, profile, lambda: None)
        window.action_detail = "-"
        return window
    release = f"{key.split('_')[1]}{n}"
    args = ("restart", "--plain") if key.startswith("restart") else (
        "deploy", "--release", release, "--plain")
    if key.startswith("deploy"):
        sandbox.fab("sandbox.build", "--release", release)
    window, run = run_window(SCENARIOS[key], fleet, profile,
                             lambda: sandbox.fab(*args, check=False))
    window.action_ok = run.ok
    window.action_detail = f"exit {run.code} after {run.seconds:.1f}s"
    return window


def restart_window(fleet: Fleet, profile: Profile) -> tuple[Window, Run]:
    window, run = run_window(SCENARIOS["restart"], fleet, profile,
                             lambda: sandbox.fab("restart", "--plain", check=False))
    window.action_ok = run.ok
    window.action_detail = f"exit {run.code} after {run.seconds:.1f}s"
    return window, run


def reload_window(scenario: str, fleet: Fleet, profile: Profile) -> Window:
    """The masters are found (inside each host) before the window; the action is only the
    signals and the wait for the new masters."""
    masters = reload.masters(fleet)
    window, outcome = run_window(scenario, fleet, profile, lambda: reload.reload_all(masters))
    window.action_ok = outcome.complete
    window.action_detail = outcome.detail
    return window


def restore(fleet: Fleet, rendered: dict[Path, str]) -> bool:
    """`fab setup` (configs as rendered), `fab restart` (masters reload them), all healthy;
    every config must be byte for byte what it was before the round."""
    sandbox.fab("setup")
    left = [p for p, text in rendered.items() if p.read_text() != text]
    if left:
        raise BenchError(f"replica configs not restored: {', '.join(map(str, left))}")
    sandbox.healthy()
    sandbox.fab("restart", "--plain")
    sandbox.healthy()
    return True
