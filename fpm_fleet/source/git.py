"""A git revision exported on the control machine: the hosts never need git.

The repository (a path or a URL) is cloned bare into a scratch directory, the ref is
resolved there to one commit, and that commit's tree is written out with `git archive`:
the user's own clone and work tree are only read (uncommitted changes are not deployed).
What git archive leaves out is left out: files marked `export-ignore` in .gitattributes,
submodules (not exported) and Git LFS content (its pointer files are exported as they are).
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import subprocess
import tarfile
from pathlib import Path

from fpm_fleet.core.errors import SourceError
from fpm_fleet.core.redact import redact
from fpm_fleet.releases.origin import COMMIT, Origin

log = logging.getLogger("fpm_fleet.source")

# A clone of a large repository over a slow link takes minutes; a clone that hangs must not
# hold the deploy forever (git itself has no overall deadline).
CLONE_TIMEOUT = 900.0
GIT_TIMEOUT = 120.0
SHORT = 10
REF = re.compile(r"[^\s\x00-\x1f\x7f]{1,255}")


def check_ref(ref: str) -> str:
    """A branch, tag or commit id as typed; never an option (`--upload-pack=...`)."""
    if not REF.fullmatch(ref) or ref.startswith("-"):
        raise SourceError(f"--ref {ref!r}: a branch, tag or commit id has no spaces or control "
                          "characters and does not start with '-'")
    return ref


def clone(repository: str, dest: Path) -> list[str]:
    return ["git", "clone", "--bare", "--quiet", "--", repository, str(dest)]


def resolve(repo: Path, ref: str) -> list[str]:
    """The full id of the commit `ref` names (a tag is peeled to its commit)."""
    return ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", "--end-of-options",
            f"{ref}^{{commit}}"]


def known_refs(repo: Path) -> list[str]:
    """The newest branches and tags, named in the error for a ref that does not exist."""
    return ["git", "-C", str(repo), "for-each-ref", "--sort=-creatordate", "--count=8",
            "--format=%(refname:short)", "refs/heads", "refs/tags"]


def archive(repo: Path, commit: str) -> list[str]:
    return ["git", "-C", str(repo), "archive", "--format=tar", commit]


def release_name(now: datetime.datetime, commit: str) -> str:
    """`20261128-004512-3f2a1c9b0d`: UTC time to the second, then the short commit id.
    Fixed width, so names sort by time as text; two deploys differ by time or commit."""
    return f"{now.astimezone(datetime.UTC):%Y%m%d-%H%M%S}-{commit[:SHORT]}"


def _env() -> dict[str, str]:
    # never wait on a password prompt: a repository that needs one is out of reach
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GCM_INTERACTIVE": "never"}


def _git(argv: list[str], timeout: float = GIT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    shown = redact(" ".join(argv))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=_env(), check=False)
    except FileNotFoundError:
        raise SourceError("git is not installed on this machine (deploy --ref runs it here; "
                          "the hosts need none): apt-get install git") from None
    except subprocess.TimeoutExpired:
        raise SourceError(f"`{shown}` did not finish within {timeout:.0f}s") from None
    log.info("local: %s: exit %s\n%s%s", shown, done.returncode, done.stdout, done.stderr)
    return done


def cause(text: str) -> str:
    """git's first `fatal:` line says why (dubious ownership, not found, auth); the lines
    after it are generic advice. Else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
    return redact((fatal or lines or ["no output"])[0 if fatal else -1])


def fetch(repository: str, scratch: Path) -> Path:
    """A bare clone of `repository` in `scratch` (an unreachable one fails here)."""
    repo = scratch / "repository.git"
    done = _git(clone(repository, repo), CLONE_TIMEOUT)
    if done.returncode != 0:
        raise SourceError(f"repository {redact(repository)} could not be read: "
                          f"{cause(done.stderr)}")
    return repo


def commit_of(repo: Path, ref: str, repository: str) -> str:
    done = _git(resolve(repo, check_ref(ref)))
    commit = done.stdout.strip()
    if done.returncode != 0 or not COMMIT.fullmatch(commit):
        known = _git(known_refs(repo)).stdout.split()
        raise SourceError(f"ref {ref!r} names no commit of {redact(repository)} (branches "
                          f"and tags there: {', '.join(known) or 'none'})")
    return commit


def write_tree(repo: Path, commit: str, dest: Path) -> None:
    """The commit's files into `dest` (git archive | tar, in-process)."""
    dest.mkdir(mode=0o755)
    with subprocess.Popen(archive(repo, commit), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=_env()) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                tar.extractall(dest, filter="tar")
        except (tarfile.TarError, OSError) as exc:
            proc.kill()
            raise SourceError(f"git archive of {commit[:SHORT]} could not be unpacked: "
                              f"{exc}") from None
        error = proc.stderr.read().decode(errors="replace")
        if proc.wait(timeout=GIT_TIMEOUT) != 0:
            raise SourceError(f"git archive of {commit[:SHORT]} failed: {cause(error)}")


def export(repository: str, ref: str, scratch: Path) -> tuple[Path, Origin]:
    """`ref` of `repository` as a plain directory under `scratch`, and its origin."""
    check_ref(ref)
    repo = fetch(repository, scratch)
    commit = commit_of(repo, ref, repository)
    tree = scratch / "tree"
    write_tree(repo, commit, tree)
    return tree, Origin(commit, ref)
