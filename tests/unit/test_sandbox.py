"""fpm_fleet.sandbox.hosts: the pure parts of the local fleet (cgroup placement, the inventory it
writes)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from fpm_fleet.core import inventory
from fpm_fleet.core.errors import FleetError
from fpm_fleet.sandbox import demo
from fpm_fleet.sandbox import hosts as sandbox

SESSION = "/user.slice/user-1000.slice/session-3.scope"

# A hybrid machine: cgroup v1 controllers, systemd's named v1 hierarchy, and the unified one.
HYBRID = (f"12:pids:{SESSION}\n"
          f"11:memory:{SESSION}\n"
          "10:cpu,cpuacct:/user.slice\n"
          "4:devices:/user.slice\n"
          f"1:name=systemd:{SESSION}\n"
          f"0::{SESSION}\n")


def cgroup_fs(root: Path, *hierarchies: str) -> Path:
    for name in hierarchies:
        (root / name).mkdir(parents=True)
    return root


@pytest.fixture
def hybrid_fs(tmp_path) -> Path:
    return cgroup_fs(tmp_path / "cgroup", "unified", "systemd", "memory", "pids",
                     "cpu,cpuacct", "devices")


def test_cgroup_dirs_on_a_v1_hybrid_machine_use_systemd_memory_pids_and_unified(hybrid_fs):
    dirs = sandbox.cgroup_dirs(HYBRID, "h1", hybrid_fs)
    below = f"{SESSION.lstrip('/')}/fpmf-h1"
    assert dirs == [hybrid_fs / "pids" / below, hybrid_fs / "memory" / below,
                    hybrid_fs / "systemd" / below, hybrid_fs / "unified" / below]


def test_cgroup_dirs_skip_a_hierarchy_that_is_not_mounted(tmp_path):
    fs = cgroup_fs(tmp_path / "cgroup", "unified", "systemd", "pids")
    dirs = sandbox.cgroup_dirs(HYBRID, "h2", fs)
    assert [d.relative_to(fs).parts[0] for d in dirs] == ["pids", "systemd", "unified"]


def test_cgroup_dirs_on_a_pure_v2_machine_is_one_directory_below_this_process(tmp_path):
    fs = tmp_path / "cgroup"
    fs.mkdir()
    (fs / "cgroup.controllers").write_text("cpu memory pids\n")
    text = "0::/system.slice/ssh.service\n"
    assert sandbox.cgroup_dirs(text, "h3", fs) == [fs / "system.slice/ssh.service/fpmf-h3"]


def test_cgroup_dirs_of_a_process_in_the_root_cgroup_sit_at_the_top(tmp_path):
    fs = tmp_path / "cgroup"
    fs.mkdir()
    (fs / "cgroup.controllers").write_text("memory pids\n")  # a cgroup2 root
    assert sandbox.cgroup_dirs("0::/\n", "h1", fs) == [fs / "fpmf-h1"]


def test_cgroup_dirs_skip_a_v2_line_when_the_root_is_no_cgroup2_mount(tmp_path):
    fs = tmp_path / "cgroup"
    fs.mkdir()  # a plain tmpfs holding v1 hierarchies, with no unified/
    assert sandbox.cgroup_dirs("0::/\n", "h1", fs) == []


def test_cgroup_dirs_without_any_mounted_hierarchy_is_empty(tmp_path):
    assert sandbox.cgroup_dirs(HYBRID, "h1", tmp_path / "missing") == []


# --- the inventory `sandbox.up` writes ---------------------------------------------------------

@pytest.fixture
def written(tmp_path) -> tuple[Path, inventory.Fleet]:
    base = tmp_path / "sand box"  # the checkout may sit anywhere, spaces included
    base.mkdir()
    for made_by_up in ("id_ed25519", "known_hosts"):
        (base / made_by_up).write_text("")
    path = base / "hosts.toml"
    path.write_text(sandbox.inventory([sandbox.SandboxHost(1), sandbox.SandboxHost(2)], base))
    return base, inventory.load(path)


def test_sandbox_inventory_loads_with_one_host_per_sandbox_host(written):
    _, fleet = written
    assert [(h.name, h.address, h.port) for h in fleet.hosts] == [
        ("h1", "198.18.0.11", 22), ("h2", "198.18.0.12", 22)]


def test_sandbox_hosts_are_reached_as_deploy_with_sudo_like_production(written):
    _, fleet = written
    for host in fleet.hosts:
        assert (host.user, host.sudo, host.setup_user) == ("deploy", True, "root")
        assert host.apache.mode == "system"
        assert host.root == "/srv/fpm-fleet"


def test_sandbox_inventory_points_at_the_keys_and_logs_of_the_sandbox_dir(written):
    base, fleet = written
    host = fleet.hosts[0]
    assert host.known_hosts == str(base / "known_hosts")
    assert host.identity_file == str(base / "id_ed25519")
    assert host.connect_timeout == 5.0
    assert fleet.log_dir == str(base / "logs")


def test_sandbox_inventory_has_one_www_pool_built_into_the_sandbox_dir(written):
    base, fleet = written
    (pool,) = fleet.pools
    assert (pool.name, pool.replicas, pool.max_children) == ("www", 2, 8)
    assert pool.source == str(base / "build" / "www")
    assert pool.shared == ("storage",)


def test_sandbox_inventory_takes_the_replica_count(tmp_path):
    path = tmp_path / "hosts.toml"
    for made_by_up in ("id_ed25519", "known_hosts"):
        (tmp_path / made_by_up).write_text("")
    path.write_text(sandbox.inventory([sandbox.SandboxHost(1)], tmp_path, replicas=3))
    assert inventory.load(path).pools[0].replicas == 3


def test_sandbox_host_names_its_namespace_link_and_address_after_its_index():
    host = sandbox.SandboxHost(7, Path("/var/tmp/x"))
    assert (host.name, host.netns, host.veth, host.address) == (
        "h7", "fpmf-h7", "fpmf-h7", "198.18.0.17")
    assert host.root == Path("/var/tmp/x/hosts/h7/root")
    assert len(sandbox.SandboxHost(50).veth) <= 15  # IFNAMSIZ - 1


def test_a_sandbox_host_takes_the_base_trees_broad_sudo_rule_away_in_its_own_layer(tmp_path):
    """Only fab setup's sudoers file is left for the deploy user, as on a production host."""
    etc = tmp_path / "etc"
    (etc / "sudoers.d").mkdir(parents=True)
    (etc / "sudoers.d" / "deploy").write_text("deploy ALL=(root) NOPASSWD: ALL\n")
    (etc / "sudoers.d" / "README").write_text("kept\n")
    sandbox.restrict_sudo(etc)
    sandbox.restrict_sudo(etc)  # again: harmless
    assert sorted(p.name for p in (etc / "sudoers.d").iterdir()) == ["README"]


# --- the machine's sandbox lock (on a lock file of the test's own) -------------------------------

@pytest.fixture
def unheld(monkeypatch):
    """No parent of this test holds the lock (an integration run would mark the env)."""
    monkeypatch.delenv(sandbox.LOCK_HELD, raising=False)


def _hold_elsewhere(path: Path, seconds: float) -> subprocess.Popen[bytes]:
    """Another process holding the flock on `path` for `seconds`; returns once it holds it."""
    proc = subprocess.Popen(["flock", "-x", str(path), "sh", "-c", f"echo held; sleep {seconds}"],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
    return proc


def test_the_lock_marks_the_environment_while_held_and_unmarks_it_after(unheld, tmp_path):
    with sandbox.exclusive(path=tmp_path / "lock"):
        assert os.environ[sandbox.LOCK_HELD] == "1"
    assert sandbox.LOCK_HELD not in os.environ


def test_a_busy_lock_is_refused_without_wait(unheld, tmp_path):
    other = _hold_elsewhere(tmp_path / "lock", 30)
    try:
        with pytest.raises(FleetError, match="in use by another run"), \
                sandbox.exclusive(path=tmp_path / "lock"):
            pass
    finally:
        other.kill()
        other.wait()


def test_a_busy_lock_with_wait_says_so_and_is_taken_once_free(unheld, tmp_path):
    said: list[str] = []
    other = _hold_elsewhere(tmp_path / "lock", 0.3)
    try:
        with sandbox.exclusive(wait=True, say=said.append, path=tmp_path / "lock"):
            assert os.environ[sandbox.LOCK_HELD] == "1"
    finally:
        other.wait()
    assert said == [f"waiting for {tmp_path / 'lock'}: another sandbox user (tests?) holds it"]


def test_a_run_under_a_parent_holding_the_lock_goes_through(monkeypatch, tmp_path):
    monkeypatch.setenv(sandbox.LOCK_HELD, "1")
    other = _hold_elsewhere(tmp_path / "lock", 30)
    try:
        with sandbox.exclusive(path=tmp_path / "lock"):
            pass
    finally:
        other.kill()
        other.wait()


def test_leftovers_after_waits_for_processes_that_die_late(monkeypatch, tmp_path):
    answers = [["process 42 sleep"], ["process 42 sleep"], []]
    monkeypatch.setattr(sandbox, "leftovers", lambda base: answers.pop(0))
    assert sandbox.leftovers_after(tmp_path, seconds=5) == []
    assert answers == []


def test_leftovers_after_reports_what_is_still_there_at_the_deadline(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "leftovers", lambda base: [f"directory {base}"])
    assert sandbox.leftovers_after(tmp_path, seconds=0) == [f"directory {tmp_path}"]


def test_the_host_launcher_is_the_checkouts_script():
    assert sandbox.LAUNCHER.is_file()
    assert sandbox.LAUNCHER.parent.name == "scripts"


def test_demo_release_may_carry_its_own_hashed_asset(tmp_path):
    assert demo.asset_path("v1") != demo.asset_path("v2")
    assert re.fullmatch(r"assets/app\.[0-9a-f]{6}\.css", demo.asset_path("v1"))
    with_asset = demo.build(tmp_path / "a", "v1", asset=True)
    assert "v1" in (with_asset / demo.asset_path("v1")).read_text()
    assert not (demo.build(tmp_path / "b", "v1") / "assets").exists()
