"""The command line as an operator meets it: which inventory is read, and how bad input ends
(one message naming the problem, an exit code, no host touched: these hosts do not exist)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).with_name("fab"))

INVENTORY = """
[[hosts]]
name = "{name}"
address = "127.0.0.1"
port = 9  # nothing listens: refused at once, no packet leaves the machine
connect_timeout = 1

[pools.www]
replicas = 2
"""


def fab(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "FABRIC_INVENTORY"}
    return subprocess.run([FAB, *args], cwd=cwd, env={**full, **(env or {})},
                          capture_output=True, text=True, timeout=60, check=False)


def inventory(tmp_path: Path, name: str = "alpha", text: str | None = None) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text if text is not None else INVENTORY.format(name=name))
    return path


def test_the_environment_variable_chooses_the_inventory(tmp_path: Path) -> None:
    proc = fab("list", env={"FABRIC_INVENTORY": str(inventory(tmp_path, "from-env"))})
    assert proc.returncode == 0, proc.stderr
    assert "from-env" in proc.stdout


def test_a_fabric_yaml_next_to_the_fabfile_chooses_the_inventory(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "fabfile.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom tasks import collection\n"
        "ns = collection()\n")
    (project / "fabric.yaml").write_text(f"inventory: {inventory(tmp_path, 'from-yaml')}\n")
    proc = fab("list", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert "from-yaml" in proc.stdout


def test_a_malformed_inventory_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    bad = inventory(tmp_path, text=INVENTORY.format(name="a").replace("replicas = 2",
                                                                      "replicas = 1"))
    proc = fab("restart", env={"FABRIC_INVENTORY": str(bad)})
    assert proc.returncode == 2
    assert f"{bad}: pools.www.replicas: must be >= 2" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_typo_in_a_key_exits_2_naming_the_closest_valid_key(tmp_path: Path) -> None:
    bad = inventory(tmp_path, text=INVENTORY.format(name="a") + "max_childen = 4\n")
    proc = fab("status", env={"FABRIC_INVENTORY": str(bad)})
    assert proc.returncode == 2
    assert "pools.www.max_childen: unknown key; did you mean 'max_children'?" in proc.stderr


def test_an_unknown_pool_or_host_is_refused_with_the_valid_names(tmp_path: Path) -> None:
    env = {"FABRIC_INVENTORY": str(inventory(tmp_path))}
    proc = fab("restart", "--pool", "shop", env=env)
    assert proc.returncode == 2 and "unknown pool 'shop'; valid pools: www" in proc.stderr
    proc = fab("stop", "--host", "beta", env=env)
    assert proc.returncode == 2 and "unknown host 'beta'; valid hosts: alpha" in proc.stderr
    proc = fab("start", "--replica", "3", env=env)
    assert proc.returncode == 2 and "unknown replica 3" in proc.stderr


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_refused_connection_is_one_line_naming_host_and_cause(tmp_path: Path) -> None:
    proc = fab("restart", env={"FABRIC_INVENTORY": str(inventory(tmp_path))})
    assert proc.returncode == 3
    (error,) = errors(proc.stderr)
    assert "alpha (root@127.0.0.1:9): connection refused: nothing listens on port 9" in error
    assert "Traceback" not in proc.stderr


@contextmanager
def listening() -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP server on 127.0.0.1 that accepts and never answers; yields its port and the
    connections it accepted."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1], accepted
    finally:
        server.close()
        for conn in accepted:
            conn.close()


def test_a_host_that_never_sends_its_banner_is_one_line_and_no_paramiko_noise(
        tmp_path: Path) -> None:
    with listening() as (port, accepted):
        text = INVENTORY.format(name="alpha").replace("port = 9", f"port = {port}")
        proc = fab("restart", env={"FABRIC_INVENTORY": str(inventory(tmp_path, text=text))})
        assert accepted, "the task never reached the silent host"
    assert proc.returncode == 3
    (error,) = errors(proc.stderr)
    assert f"alpha (root@127.0.0.1:{port}): no SSH banner within 1s" in error
    for noise in ("Traceback", "paramiko", "Exception (client)", "Error reading SSH"):
        assert noise not in proc.stderr


def test_a_missing_identity_file_exits_2_before_any_host_is_touched(tmp_path: Path) -> None:
    with listening() as (port, accepted):
        text = INVENTORY.format(name="alpha").replace(
            "port = 9", f'port = {port}\nidentity_file = "keys/deploy"')
        proc = fab("restart", env={"FABRIC_INVENTORY": str(inventory(tmp_path, text=text))})
        assert not accepted
    assert proc.returncode == 2
    (error,) = errors(proc.stderr)
    assert (f"hosts.alpha.identity_file: file {tmp_path / 'keys' / 'deploy'} does not exist"
            in error)


def test_a_failed_check_still_prints_where_its_log_is(tmp_path: Path) -> None:
    proc = fab("check", env={"FABRIC_INVENTORY": str(inventory(tmp_path))})
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"log: {tmp_path / 'logs'}/fpm-fleet-")
    assert Path(last.removeprefix("log: ")).is_file()


def test_deploy_without_a_release_says_so_and_touches_no_host(tmp_path: Path) -> None:
    with listening() as (port, accepted):
        text = INVENTORY.format(name="alpha").replace("port = 9", f"port = {port}")
        proc = fab("deploy", env={"FABRIC_INVENTORY": str(inventory(tmp_path, text=text))})
        assert not accepted
    assert proc.returncode == 2
    (error,) = errors(proc.stderr)
    assert error == ("error: deploy needs --release NAME (the name of the new release: "
                     "letters, digits, '.', '_' and '-', e.g. --release v42) or --ref REF (a "
                     "git branch, tag or commit of the pool's `repository`)")


@pytest.mark.parametrize("task", [["deploy", "--release", "v2"], ["rollback"], ["restart"]])
@pytest.mark.parametrize("order", [("--canary", "0"), ("--parallel", "0")])
def test_a_rollout_order_below_one_host_exits_2_and_touches_no_host(
        tmp_path: Path, task: list[str], order: tuple[str, str]) -> None:
    with listening() as (port, accepted):
        text = INVENTORY.format(name="alpha").replace("port = 9", f"port = {port}")
        proc = fab(*task, *order, env={"FABRIC_INVENTORY": str(inventory(tmp_path, text=text))})
        assert not accepted
    assert proc.returncode == 2, proc.stderr
    (error,) = errors(proc.stderr)
    assert error.startswith(f"error: {order[0]} must be at least 1 (got 0)")


@contextmanager
def any_app() -> Iterator[tuple[int, list[tuple[str, str]]]]:
    """A web application that is not the demo: 200 to any path; records (path, Host)."""
    seen: list[tuple[str, str]] = []

    class App(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Host", "")))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>welcome</html>")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), App)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


def app_inventory(tmp_path: Path, port: int, pools: str = "") -> Path:
    text = INVENTORY.format(name="alpha").replace(
        "connect_timeout = 1", f'connect_timeout = 1\napache = {{ listen = "127.0.0.1:{port}" }}')
    return inventory(tmp_path, text=text + 'server_name = "shop.example.com"\n' + pools)


def test_stress_requests_the_given_paths_of_any_app_with_the_pools_server_name(
        tmp_path: Path) -> None:
    with any_app() as (port, seen):
        proc = fab("stress", "--path", "/", "--path", "/login", "--duration", "1",
                   "--max-requests", "50",
                   env={"FABRIC_INVENTORY": str(app_inventory(tmp_path, port))})
    assert proc.returncode == 0, proc.stderr
    assert seen and {path for path, _ in seen} == {"/", "/login"}
    assert {host for _, host in seen} == {f"shop.example.com:{port}"}


def test_stress_asks_atomic_php_only_with_atomic(tmp_path: Path) -> None:
    with any_app() as (port, seen):
        fab("stress", "--atomic", "--duration", "1", "--max-requests", "50",
            env={"FABRIC_INVENTORY": str(app_inventory(tmp_path, port))})
    assert {path.split("?")[0] for path, _ in seen} == {"/", "/atomic.php"}


def test_stress_on_a_fleet_of_several_pools_asks_which(tmp_path: Path) -> None:
    path = app_inventory(tmp_path, 9, pools="[pools.api]\nreplicas = 2\n")
    proc = fab("stress", env={"FABRIC_INVENTORY": str(path)})
    assert proc.returncode == 2
    assert "stress loads one pool's virtual host: add --pool (one of www, api)" in proc.stderr


def test_sudoers_prints_the_file_setup_installs_for_the_inventory_user(tmp_path: Path) -> None:
    text = INVENTORY.format(name="alpha").replace("[[hosts]]", '[defaults]\nuser = "deploy"\n\n'
                                                  "[[hosts]]")
    proc = fab("sudoers", env={"FABRIC_INVENTORY": str(inventory(tmp_path, text=text))})
    assert proc.returncode == 0, proc.stderr
    assert "/usr/bin/systemctl start fpm-fleet-www@2.service, \\" in proc.stdout
    assert proc.stdout.endswith("deploy ALL=(root) NOPASSWD: FPM_FLEET\n")


def test_an_infinite_timeout_or_absurd_pool_size_exits_2_naming_the_key(tmp_path: Path) -> None:
    for key, line in (("connect_timeout", "connect_timeout = inf"),
                      ("max_children", "max_children = 1000000")):
        text = INVENTORY.format(name="alpha").replace(
            "connect_timeout = 1" if key == "connect_timeout" else "replicas = 2",
            line if key == "connect_timeout" else f"replicas = 2\n{line}")
        proc = fab("list", env={"FABRIC_INVENTORY": str(inventory(tmp_path, text=text))})
        assert proc.returncode == 2, proc.stderr
        assert f".{key}: must be" in proc.stderr, proc.stderr
