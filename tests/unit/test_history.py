"""`fab history`: the record's entries (old five-field ones too), malformed lines skipped and
counted, results derived from the revert entries, the JSON shape, and the record written for
real by activations in a shell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import LocalRunner
from invoke.config import Config
from invoke.context import Context
from invoke.exceptions import Exit

from fpm_fleet.releases import commands as rs
from fpm_fleet.releases import history
from fpm_fleet.releases import store as release
from fpm_fleet.remote.group import HostGroup
from tasks import history as cli_history

T = "2026-11-28T01:00:00+0000"


def line(release_: str, previous: str, command: str, kind: str | None = None,
         who: str = "ops@ci") -> str:
    fields = [T, release_, previous, who, command] + ([kind] if kind else [])
    return "\t".join(fields) + "\n"


RECORD = (line("v1", "-", "fab deploy --release v1", "deploy")
          + line("v2", "v1", "fab deploy --release v2", "deploy")
          + line("v3", "v2", "fab deploy --release v3", "deploy")
          + line("v2", "v3", "revert of fab deploy --release v3", "revert")
          + line("v1", "v2", "fab rollback --to v1", "rollback"))


def test_rows_are_newest_first_with_kind_from_to_and_result():
    ph = history.pool_history("h1", "www", RECORD)
    assert [(r.kind, r.before, r.after, r.result) for r in ph.rows] == [
        ("rollback", "v2", "v1", "ok"), ("revert", "v3", "v2", "ok"),
        ("deploy", "v2", "v3", "reverted"), ("deploy", "v1", "v2", "ok"),
        ("deploy", None, "v1", "ok")]
    assert (ph.total, ph.skipped) == (5, 0)


def test_limit_keeps_the_newest_entries():
    ph = history.pool_history("h1", "www", RECORD, limit=2)
    assert [r.after for r in ph.rows] == ["v1", "v2"] and ph.total == 5
    assert len(history.pool_history("h1", "www", RECORD, limit=0).rows) == 5


def test_malformed_lines_are_skipped_and_counted_never_trusted():
    bad = ["garbage\n", "2026-13-99\tv9\n",                       # too few fields
           line("v9", "v1", "fab deploy", "explode"),             # unknown kind
           line("../etc", "v1", "fab deploy", "deploy"),          # not a release name
           "yesterday\tv9\tv1\tops@ci\tfab deploy\tdeploy\n",    # not a time
           line("v9", "v1", "fab deploy", "deploy").rstrip("\n") + "\textra\n",
           "\n", "   \n"]                                         # blank: not counted
    ph = history.pool_history("h1", "www", RECORD + "".join(bad))
    assert ph.total == 5 and ph.skipped == 6
    assert ph.rows[0].after == "v1"


def test_old_five_field_entries_get_their_kind_from_the_command():
    old = (line("v2", "v1", "fab deploy --release v2") + line("v1", "v2", "fab rollback")
           + line("v3", "v1", "fpm-fleet deploy --release v3")
           + line("v1", "v3", "revert of fpm-fleet deploy --release v3"))
    ph = history.pool_history("h1", "www", old)
    assert [(r.kind, r.result) for r in ph.rows] == [
        ("revert", "ok"), ("deploy", "reverted"), ("rollback", "ok"), ("deploy", "ok")]


def test_a_revert_of_another_release_does_not_mark_an_entry_reverted():
    text = line("v2", "v1", "fab deploy", "deploy") + line("v0", "v5", "revert of x", "revert")
    assert [r.result for r in history.pool_history("h", "www", text).rows] == ["ok", "ok"]


def test_the_json_shape_and_masked_commands():
    text = line("v2", "v1", "fab deploy --release v2 --token=abc", "deploy", who="al@box")
    (row,) = history.pool_history("h1", "www", text).rows
    assert json.loads(json.dumps(row.as_json())) == {
        "host": "h1", "pool": "www", "time": T, "who": "al@box", "kind": "deploy",
        "from": "v1", "to": "v2", "command": "fab deploy --release v2 --token=***",
        "result": "ok"}


def test_activations_write_the_kind_that_history_reads_back(sh, layout):
    for name in ("v1", "v2"):
        sh(f"mkdir -p {layout.release(name)}")
    for name, kind in (("v1", "deploy"), ("v2", "deploy"), ("v1", "revert")):
        assert sh(rs.activate(layout, name, T, "al@box", f"fab {kind}", kind)).returncode == 0
    ph = history.pool_history("h1", "www", sh(rs.read_history(layout)).stdout)
    assert [(r.kind, r.before, r.after, r.result) for r in ph.rows] == [
        ("revert", "v2", "v1", "ok"), ("deploy", "v1", "v2", "reverted"),
        ("deploy", None, "v1", "ok")]
    # what rollback and cleanup read is unchanged by the kind field
    assert release.previous_of("v1", release.parse_history(sh(rs.read_history(layout)).stdout)) \
        == "v2"


# --- the task, on a host that is a directory reached by a local shell ----------------------------

@pytest.fixture
def ctx(tmp_path: Path, monkeypatch) -> Context:
    path = tmp_path / "hosts.toml"
    path.write_text(f'log_dir = "{tmp_path}/logs"\n[[hosts]]\nname = "local"\n'
                    f'address = "127.0.0.1"\nroot = "{tmp_path}/srv"\n'
                    '[pools.www]\nreplicas = 2\n')
    monkeypatch.setattr(HostGroup, "_connect", lambda self, h: LocalRunner(h, tmp_path))
    return Context(Config(overrides={"inventory": str(path)}))


def test_the_task_prints_json_and_says_how_many_lines_it_skipped(ctx, tmp_path, capsys):
    state = tmp_path / "srv" / "www" / "state"
    state.mkdir(parents=True)
    (state / "history").write_text(RECORD + "truncated\tv9\n")
    cli_history.history_(ctx, json_=True, limit=2)
    out, err = capsys.readouterr()
    assert [(e["kind"], e["to"]) for e in json.loads(out)] == [("rollback", "v1"),
                                                               ("revert", "v2")]
    assert "local/www: 1 malformed history line(s) skipped" in err


def test_the_task_on_a_pool_never_deployed_shows_an_empty_table(ctx, capsys):
    cli_history.history_(ctx)
    out, err = capsys.readouterr()
    assert "history" in out and "skipped" not in err


def test_the_task_refuses_a_negative_limit(ctx):
    with pytest.raises(Exit) as info:
        cli_history.history_(ctx, limit=-1)
    assert info.value.code == 2
