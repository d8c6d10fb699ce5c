"""The rollout order on a real mixed 3-host sandbox (h1 and h3 Apache, h2 nginx), under
load: the canary (the inventory's first host) rolls first and must pass; a failing canary
leaves the other hosts untouched; then the other two roll together. Run once with an
Apache canary (h1) and once with the nginx one (h2 listed first)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import Sandbox, WebHost, assert_no_failures, fab, load, ok

HOST_BLOCK = re.compile(r"^\[\[hosts\]\]\n(?:.+\n)+\n", re.MULTILINE)


@pytest.fixture(scope="module")
def box(mixed3: Sandbox) -> Sandbox:
    return mixed3


def canary_first(box: Sandbox, canary: WebHost, directory: Path) -> Path:
    """The fleet's inventory with the canary's host listed first (the deploy's canary)."""
    text = box.path.read_text()
    blocks = HOST_BLOCK.findall(text)
    assert len(blocks) == len(box.fleet.hosts), text
    ordered = [blocks[canary.index]] + [b for i, b in enumerate(blocks) if i != canary.index]
    start = text.index(blocks[0])
    rest = HOST_BLOCK.sub("", text[start:])
    path = directory / "hosts.toml"
    path.write_text(text[:start] + "".join(ordered) + rest)
    return path


def masters(box: Sandbox, host: str) -> set[tuple[int, str, str]]:
    """Each replica's master of one host: number, pid and pinned release."""
    return {(r["replica"], r["pid"], r["release"]) for r in box.status() if r["host"] == host}


def lines_of(stderr: str, host: str) -> list[int]:
    return [i for i, line in enumerate(stderr.splitlines()) if line.startswith(f"[{host}]")]


def test_a_failing_canary_leaves_the_fleet_untouched_then_a_deploy_rolls_canary_first(
        box: Sandbox, web_host: WebHost, tmp_path: Path) -> None:
    inv = canary_first(box, web_host, tmp_path)
    canary = web_host.name
    others = {n: h.name for n, h in enumerate(box.fleet.hosts) if h.name != canary}
    before = {h: masters(box, h) for h in others.values()}
    bad, good = f"c1-{web_host.web}", f"c2-{web_host.web}"
    box.build(bad, unhealthy=True)
    with load(box) as stats:
        failed = fab("deploy", "--release", bad, "--plain", inventory_path=inv)
    assert failed.returncode == 5, failed.stderr
    said = " ".join(failed.stderr.split())  # long lines may wrap
    assert f"deploy failed on the canary: {canary}:" in said
    assert f"not reached (untouched): {', '.join(sorted(others.values()))}" in said
    assert "(canary)" in failed.stdout and "reverted" in failed.stdout
    assert_no_failures(stats)
    assert (box.pool_dir(web_host.index) / "state" / "bad" / bad).exists()
    for n, host in others.items():
        assert not lines_of(failed.stderr, host), f"{host} was reached"
        assert not (box.pool_dir(n) / "releases" / bad).exists(), f"{host} got the upload"
        assert masters(box, host) == before[host], f"{host}'s replicas were restarted"

    box.build(good)
    with load(box) as stats:
        proc = ok(fab("deploy", "--release", good, "--plain", inventory_path=inv))
    assert_no_failures(stats)
    rows = box.status()
    assert len(rows) == 6 and all(r["release"] == good and r["ok"] for r in rows), rows
    assert {r["web"] for r in rows if r["host"] == canary} == {web_host.web}
    recap = proc.stdout
    assert recap.count(f"-> {good}") == 3 and f"{canary} (canary)" in recap, recap
    err = proc.stderr.splitlines()
    canary_enabled = [i for i in lines_of(proc.stderr, canary) if " enable ok" in err[i]]
    first, second = (lines_of(proc.stderr, h) for h in sorted(others.values()))
    assert canary_enabled and min(first + second) > max(canary_enabled), \
        "the other hosts started once the canary's replicas all served"
    assert min(second) < max(first), "the other two hosts rolled at the same time"
