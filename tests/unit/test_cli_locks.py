"""Which tasks take the pools' locks (issue 9, item 11): every task that changes state does
(setup, restart, start, stop here; deploy, rollback and cleanup in their own modules), and
is refused, naming the holder, while another run holds one. Hosts are a directory under
tmp_path reached through a local runner; the work itself is replaced by a probe."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import LocalRunner
from invoke.config import Config
from invoke.context import Context
from invoke.exceptions import Exit

from fpm_fleet import provision
from fpm_fleet.host import lock
from fpm_fleet.host.layout import Layout
from fpm_fleet.remote.group import HostGroup
from fpm_fleet.rollout import hosts as rollout
from tasks import fleet as cli_fleet

INVENTORY = """
log_dir = "{tmp}/logs"

[[hosts]]
name = "local"
address = "127.0.0.1"
root = "{tmp}/srv"

[pools.www]
replicas = 2

[pools.api]
replicas = 2
"""


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch) -> Context:
    path = tmp_path / "hosts.toml"
    path.write_text(INVENTORY.format(tmp=tmp_path))
    monkeypatch.setattr(HostGroup, "_connect", lambda self, h: LocalRunner(h, tmp_path))
    monkeypatch.setattr(provision, "setup_connector", lambda h: LocalRunner(h, tmp_path))
    return Context(Config(overrides={"inventory": str(path)}))


def lock_files(tmp_path: Path) -> dict[str, bool]:
    return {pool: (tmp_path / "srv" / pool / "state" / "lock").exists() for pool in ("www", "api")}


def test_setup_holds_every_pools_lock_while_it_works(ctx, tmp_path, monkeypatch):
    seen: list[dict[str, bool]] = []

    def probe(ex, fleet, host):
        seen.append(lock_files(tmp_path))
        return provision.SetupReport(host.name, [])

    monkeypatch.setattr(provision, "setup_host", probe)
    cli_fleet.setup(ctx)
    assert seen == [{"www": True, "api": True}]
    assert lock_files(tmp_path) == {"www": False, "api": False}


@pytest.mark.parametrize("task", ["restart", "start", "stop"])
def test_lifecycle_tasks_hold_the_selected_pools_locks(ctx, tmp_path, monkeypatch, task):
    seen: list[dict[str, bool]] = []
    monkeypatch.setattr(rollout, f"{task}_host", lambda *a, **k: seen.append(lock_files(tmp_path)))
    getattr(cli_fleet, task)(ctx, pool="api", plain=True)
    assert seen == [{"www": False, "api": True}]
    assert lock_files(tmp_path) == {"www": False, "api": False}


def test_a_restart_while_another_run_holds_the_lock_is_refused_naming_it(ctx, tmp_path,
                                                                          monkeypatch, capsys):
    monkeypatch.setattr(rollout, "restart_host", lambda *a, **k: pytest.fail("restarted"))
    layout = Layout(dir=tmp_path / "srv" / "www", pool="www")  # type: ignore[arg-type]
    Path(layout.state).mkdir(parents=True)
    other = lock.Holder("bob@ctl2", "m2", "b2", 77, "1", "2026-01-01T00:00:00+0000",
                        "fab deploy --release v9")
    Path(lock.lock_path(layout)).write_text(other.line() + "\n")
    with pytest.raises(Exit) as info:
        cli_fleet.restart(ctx, plain=True)
    assert info.value.code == 6
    assert ("pool www is locked by another run: `fab deploy --release v9` (pid 77 of bob@ctl2"
            in capsys.readouterr().err)
