"""The rollout order on a real 3-host sandbox, under load: the canary (h1) rolls first and must
pass; a failing canary leaves h2 and h3 untouched; then h2 and h3 roll together."""

from __future__ import annotations

import pytest

from .conftest import Sandbox, assert_no_failures, fab, load, ok


@pytest.fixture(scope="module")
def box(fleet3: Sandbox) -> Sandbox:
    return fleet3


def masters(box: Sandbox, host: str) -> set[tuple[int, str, str]]:
    """Each replica's master of one host: number, pid and pinned release."""
    return {(r["replica"], r["pid"], r["release"]) for r in box.status() if r["host"] == host}


def lines_of(stderr: str, host: str) -> list[int]:
    return [i for i, line in enumerate(stderr.splitlines()) if line.startswith(f"[{host}]")]


def test_a_failing_canary_leaves_the_fleet_untouched_then_a_deploy_rolls_canary_first(
        box: Sandbox) -> None:
    before = {h: masters(box, h) for h in ("h2", "h3")}
    box.build("c1", unhealthy=True)
    with load(box) as stats:
        failed = fab("deploy", "--release", "c1", "--plain")
    assert failed.returncode == 5, failed.stderr
    said = " ".join(failed.stderr.split())  # long lines may wrap
    assert "deploy failed on the canary: h1:" in said
    assert "not reached (untouched): h2, h3" in said
    assert "(canary)" in failed.stdout and "reverted" in failed.stdout
    assert_no_failures(stats)
    assert (box.pool_dir(0) / "state" / "bad" / "c1").exists()
    for n, host in ((1, "h2"), (2, "h3")):
        assert not lines_of(failed.stderr, host), f"{host} was reached"
        assert not (box.pool_dir(n) / "releases" / "c1").exists(), f"{host} got the upload"
        assert masters(box, host) == before[host], f"{host}'s replicas were restarted"

    box.build("c2")
    with load(box) as stats:
        proc = ok(fab("deploy", "--release", "c2", "--plain"))
    assert_no_failures(stats)
    rows = box.status()
    assert len(rows) == 6 and all(r["release"] == "c2" and r["ok"] for r in rows), rows
    recap = proc.stdout
    assert recap.count("-> c2") == 3 and "h1 (canary)" in recap, recap
    err = proc.stderr.splitlines()
    canary_enabled = [i for i in lines_of(proc.stderr, "h1") if " enable ok" in err[i]]
    wave = lines_of(proc.stderr, "h2") + lines_of(proc.stderr, "h3")
    assert canary_enabled and min(wave) > max(canary_enabled), \
        "h2 and h3 started once the canary's replicas all served"
    assert min(lines_of(proc.stderr, "h3")) < max(lines_of(proc.stderr, "h2")), \
        "h2 and h3 rolled at the same time"
