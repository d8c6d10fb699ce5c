"""Security checks on a real 2-host sandbox: host keys, quoting, no secret in any output."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tasks.sandbox import HOSTS_DIR

from .conftest import ROOT, SANDBOX, Sandbox, fab, get, ok


@pytest.fixture(scope="module")
def box(fleet2: Sandbox) -> Sandbox:
    return fleet2


def with_known_hosts(box: Sandbox, tmp_path: Path, text: str, extra: str = "") -> Path:
    known = tmp_path / "known_hosts"
    known.write_text(text)
    inv = tmp_path / "hosts.toml"
    inv.write_text(box.path.read_text().replace(str(SANDBOX / "known_hosts"), str(known))
                   .replace("[defaults]\n", f"[defaults]\n{extra}"))
    return inv


def test_unknown_host_key_is_refused(box: Sandbox, tmp_path: Path) -> None:
    inv = with_known_hosts(box, tmp_path, "")
    before = box.status()
    proc = fab("restart", inventory_path=inv)
    assert proc.returncode == 3, proc.stderr
    assert "unknown host key" in proc.stderr
    status = fab("status", inventory_path=inv)
    assert status.returncode != 0 and "unreachable" in status.stdout
    assert [r["pid"] for r in box.status()] == [r["pid"] for r in before]


def test_changed_host_key_is_refused(box: Sandbox, tmp_path: Path) -> None:
    key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, body = key.with_suffix(".pub").read_text().split()[:2]
    lines = "".join(f"{a} {kind} {body}\n" for a in box.addresses())
    proc = fab("check", inventory_path=with_known_hosts(box, tmp_path, lines))
    assert proc.returncode != 0
    assert "does not match known_hosts" in proc.stdout + proc.stderr


def test_trusting_new_host_keys_is_an_explicit_opt_in(box: Sandbox, tmp_path: Path) -> None:
    inv = with_known_hosts(box, tmp_path, "# kept\n", extra="trust_new_host_keys = true\n")
    first = ok(fab("check", inventory_path=inv))
    assert first.stderr.count("trusted the new host key of") == len(box.addresses())
    saved = (tmp_path / "known_hosts").read_text().splitlines()
    assert saved[0] == "# kept" and len(saved) == 1 + len(box.addresses())
    again = ok(fab("check", inventory_path=inv))
    assert "trusted the new host key" not in again.stderr


def test_source_paths_with_spaces_and_shell_characters_deploy_safely(box: Sandbox,
                                                                     tmp_path: Path) -> None:
    source = tmp_path / "my app; touch pwned $(touch pwned) `touch pwned`"
    box.build("v7", files=2)
    subprocess.run(["cp", "-a", str(box.fleet.pools[0].source), str(source)], check=True)
    (source / "odd name ;$(x).txt").write_text("static\n")
    ok(fab("deploy", "--release", "v7", "--source", str(source)))
    for where in (ROOT, tmp_path, HOSTS_DIR / "home", Path("/")):
        assert not (where / "pwned").exists()
    for address in box.addresses():
        assert get(address, "/ping.php")[1].startswith("pong v7")
        assert get(address, "/odd%20name%20;$(x).txt")[1] == "static\n"


def test_no_secret_is_printed_or_logged(box: Sandbox) -> None:
    outputs = [fab(*args) for args in (("check",), ("status",), ("restart",),
                                       ("releases",), ("list",))]
    key = (SANDBOX / "id_ed25519").read_text()
    body = [line for line in key.splitlines() if line and "PRIVATE KEY" not in line]
    texts = [p.stdout + p.stderr for p in outputs]
    texts += [p.read_text() for p in (SANDBOX / "logs").glob("*.log")]
    for text in texts:
        assert "PRIVATE KEY" not in text
        assert not any(chunk in text for chunk in body)
