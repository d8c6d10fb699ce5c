"""fpm_fleet.source: a git revision exported on this machine (real git, repositories made
with `git init` in tmp dirs), release names, the build step on a copy, and the usage rules
of `deploy --ref`."""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from fpm_fleet.core.errors import ConfigError, SourceError, UsageError
from fpm_fleet.core.events import Event
from fpm_fleet.core.inventory import Pool, parse
from fpm_fleet.source import Request, build, git, prepared

NOW = datetime.datetime(2026, 11, 28, 1, 2, 3, tzinfo=datetime.UTC)


class Events:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def event(self, ev: Event) -> None:
        self.events.append(ev)


def run_git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "PATH": "/usr/bin:/bin", "HOME": str(repo)}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A work tree with two commits on main, a tag v1 (annotated) on the first and a branch
    `next` one commit ahead, and an uncommitted change."""
    work = tmp_path / "app"
    work.mkdir()
    run_git(work, "init", "-q", "-b", "main")
    (work / "index.php").write_text("<?php echo 'one';\n")
    (work / "skip.txt").write_text("not exported\n")
    (work / ".gitattributes").write_text("skip.txt export-ignore\n")
    run_git(work, "add", "-A")
    run_git(work, "commit", "-q", "-m", "one")
    run_git(work, "tag", "-a", "v1", "-m", "first")
    (work / "index.php").write_text("<?php echo 'two';\n")
    run_git(work, "commit", "-q", "-am", "two")
    run_git(work, "checkout", "-q", "-b", "next")
    (work / "next.php").write_text("<?php echo 'next';\n")
    run_git(work, "add", "next.php")
    run_git(work, "commit", "-q", "-m", "next")
    run_git(work, "checkout", "-q", "main")
    (work / "index.php").write_text("<?php echo 'uncommitted';\n")
    return work


def pool(tmp_path: Path, **keys: Any) -> Pool:
    data = {"hosts": [{"name": "web1", "address": "127.0.0.1"}],
            "pools": {"www": {"replicas": 2, **keys}}}
    return parse(data, str(tmp_path / "hosts.toml")).pools[0]


# --- refs and names ------------------------------------------------------------------------

@pytest.mark.parametrize("ref", ["main", "v1.2.3", "feature/x", "3f2a1c9", "HEAD~1"])
def test_a_branch_tag_or_commit_is_a_ref(ref: str) -> None:
    assert git.check_ref(ref) == ref


@pytest.mark.parametrize("ref", ["", "--upload-pack=touch x", "-b", "a b", "a\nb", "x" * 256])
def test_a_ref_that_could_be_an_option_or_spans_words_is_refused(ref: str) -> None:
    with pytest.raises(SourceError, match="--ref"):
        git.check_ref(ref)


def test_the_resolve_command_ends_options_before_the_ref() -> None:
    argv = git.resolve(Path("/r.git"), "main")
    assert argv[-2:] == ["--end-of-options", "main^{commit}"]


def test_a_release_name_is_the_utc_time_then_the_short_commit() -> None:
    paris = datetime.timezone(datetime.timedelta(hours=1))
    local = datetime.datetime(2026, 11, 28, 2, 2, 3, tzinfo=paris)
    assert git.release_name(local, "3f2a1c9b0d" + "e" * 30) == "20261128-010203-3f2a1c9b0d"


def test_release_names_sort_by_time_as_text_and_differ_by_commit() -> None:
    times = [NOW + datetime.timedelta(seconds=s) for s in (0, 9, 10, 3600, 86400 * 40)]
    names = [git.release_name(t, "a" * 40) for t in times]
    assert sorted(names) == names and len(set(names)) == len(names)
    assert git.release_name(NOW, "a" * 40) != git.release_name(NOW, "b" * 40)


# --- export --------------------------------------------------------------------------------

def test_a_branch_is_exported_as_committed_and_the_work_tree_is_left_alone(
        repo: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    status_before = run_git(repo, "status", "--porcelain")
    tree, origin = git.export(str(repo), "main", scratch)
    assert origin.commit == run_git(repo, "rev-parse", "main") and origin.ref == "main"
    assert (tree / "index.php").read_text() == "<?php echo 'two';\n"
    assert not (tree / "skip.txt").exists()  # export-ignore
    assert not (tree / ".git").exists() and not (tree / "next.php").exists()
    assert (repo / "index.php").read_text() == "<?php echo 'uncommitted';\n"
    assert run_git(repo, "status", "--porcelain") == status_before
    assert run_git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"


@pytest.mark.parametrize("ref, expected", [("v1", "one"), ("next", "two")])
def test_a_tag_is_peeled_to_its_commit_and_a_branch_is_its_tip(
        repo: Path, tmp_path: Path, ref: str, expected: str) -> None:
    tree, origin = git.export(str(repo), ref, tmp_path)
    assert origin.commit == run_git(repo, "rev-parse", f"{ref}^{{commit}}")
    assert f"'{expected}'" in (tree / "index.php").read_text()


def test_a_short_commit_id_resolves_to_the_full_one(repo: Path, tmp_path: Path) -> None:
    full = run_git(repo, "rev-parse", "v1^{commit}")
    _, origin = git.export(str(repo), full[:7], tmp_path)
    assert origin.commit == full and origin.ref == full[:7]


def test_an_unknown_ref_fails_naming_the_branches_and_tags_there(
        repo: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError) as err:
        git.export(str(repo), "nope", tmp_path)
    assert "ref 'nope' names no commit" in str(err.value)
    assert "main" in str(err.value) and "v1" in str(err.value) and "next" in str(err.value)


@pytest.mark.parametrize("where", ["missing-dir", "http://127.0.0.1:9/app.git",
                                   "https://deploy:s3cret@127.0.0.1:9/app.git"])
def test_an_unreachable_repository_fails_and_never_shows_a_password(
        tmp_path: Path, where: str) -> None:
    repository = str(tmp_path / where) if where == "missing-dir" else where
    with pytest.raises(SourceError) as err:
        git.export(repository, "main", tmp_path)
    assert "could not be read" in str(err.value)
    assert "s3cret" not in str(err.value)


# --- the build step --------------------------------------------------------------------------

def test_a_build_runs_on_a_copy_and_logs_its_output(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    own = tmp_path / "own"
    own.mkdir()
    (own / "index.php").write_text("<?php\n")
    (own / "link").symlink_to("index.php")
    copy = build.copy(own, tmp_path / "copy")
    with caplog.at_level(logging.INFO, logger="fpm_fleet"):
        build.run(copy, ("echo built-$FPM_FLEET_RELEASE > out.txt && echo said-so",
                         "rm index.php"), {"FPM_FLEET_RELEASE": "r1"}, Events(), "www")
    assert (copy / "out.txt").read_text() == "built-r1\n" and not (copy / "index.php").exists()
    assert sorted(p.name for p in own.iterdir()) == ["index.php", "link"]
    assert (copy / "link").is_symlink()
    assert "said-so" in caplog.text


def test_a_failing_build_command_stops_with_its_exit_code_and_last_line(tmp_path: Path) -> None:
    events = Events()
    with pytest.raises(SourceError) as err:
        build.run(tmp_path, ("echo first", "echo broken >&2; exit 3", "touch never"), {},
                  events, "www")
    assert str(err.value) == ("build of pool www: `echo broken >&2; exit 3` failed (exit 3): "
                              "broken")
    assert not (tmp_path / "never").exists()
    assert [e.kind for e in events.events] == ["start", "done", "start", "fail"]


def test_a_build_command_is_shown_with_its_secrets_masked(tmp_path: Path) -> None:
    events = Events()
    with pytest.raises(SourceError) as err:
        build.run(tmp_path, ("TOKEN=s3cret false",), {}, events, "www")
    assert "s3cret" not in str(err.value) and all("s3cret" not in e.detail for e in events.events)


# --- prepared: what deploy uploads -------------------------------------------------------------

def test_ref_without_a_release_is_named_from_the_time_and_commit_and_built_in_the_export(
        repo: Path, tmp_path: Path) -> None:
    p = pool(tmp_path, repository=str(repo), build=["echo $FPM_FLEET_COMMIT > REVISION"])
    with prepared((p,), Request(ref="main"), Events(), NOW) as made:
        src = made["www"]
        commit = run_git(repo, "rev-parse", "main")
        assert src.release == f"20261128-010203-{commit[:10]}"
        assert src.origin is not None and src.origin.commit == commit
        assert (src.path / "REVISION").read_text() == commit + "\n"
        scratch = src.path
    assert not scratch.exists()  # the scratch copy goes with the block
    assert not (repo / "REVISION").exists()


def test_release_overrides_the_name_of_a_ref(repo: Path, tmp_path: Path) -> None:
    p = pool(tmp_path, repository=str(repo))
    with prepared((p,), Request(release="v42", ref="v1"), Events(), NOW) as made:
        assert made["www"].release == "v42"


def test_a_directory_without_build_is_uploaded_as_it_is_and_with_build_from_a_copy(
        tmp_path: Path) -> None:
    own = tmp_path / "build" / "www"
    own.mkdir(parents=True)
    (own / "index.php").write_text("<?php\n")
    with prepared((pool(tmp_path),), Request(release="v1"), Events()) as made:
        assert made["www"].path == own and made["www"].origin is None
    built = pool(tmp_path, build=["rm index.php && touch built"])
    with prepared((built,), Request(release="v1"), Events()) as made:
        assert made["www"].path != own and (made["www"].path / "built").exists()
    assert [p.name for p in own.iterdir()] == ["index.php"]


def test_a_failing_build_fails_the_prepare_and_leaves_no_scratch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "build" / "www"
    own.mkdir(parents=True)
    (own / "index.php").write_text("<?php\n")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(SourceError, match="exit 1"), \
            prepared((pool(tmp_path, build=["touch here", "false"]),), Request(release="v1"),
                     Events()):
        pass
    assert list(scratch.iterdir()) == [] and not (own / "here").exists()


@pytest.mark.parametrize("req, message", [
    (Request(), "deploy needs --release NAME"),
    (Request(ref="main", source="x"), "--ref and --source exclude each other"),
    (Request(ref="main"), "--ref needs the pool key `repository` (pool www has none"),
])
def test_deploy_options_that_do_not_fit_are_refused(tmp_path: Path, req: Request,
                                                    message: str) -> None:
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(")), \
            prepared((pool(tmp_path),), req, Events()):
        pass


def test_a_missing_source_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"), \
            prepared((pool(tmp_path),), Request(release="v1"), Events()):
        pass


def test_the_error_of_a_repository_owned_by_someone_else_says_so() -> None:
    text = ("fatal: detected dubious ownership in repository at '/r/.git'\nTo add an "
            "exception...\nfatal: Could not read from remote repository.\n\nPlease make sure "
            "you have the correct access rights\nand the repository exists.\n")
    assert git.cause(text) == "fatal: detected dubious ownership in repository at '/r/.git'"
    assert git.cause("warning: x\nlast words\n") == "last words"


def test_a_source_that_cannot_be_copied_is_a_source_error(tmp_path: Path) -> None:
    own = tmp_path / "own"
    own.mkdir()
    os.mkfifo(own / "pipe")
    with pytest.raises(SourceError, match=r"copying .* for the build failed: .*pipe"):
        build.copy(own, tmp_path / "copy")
