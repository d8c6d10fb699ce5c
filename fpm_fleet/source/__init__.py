"""What a deploy uploads, made on the control machine before any host is touched: a
directory as it is, or a git revision exported (`git`), then the pool's `build` commands
run on a copy (`build`). Every failure here is a SourceError (exit 7) or a usage error.
"""

from __future__ import annotations

import datetime
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fpm_fleet.core.errors import ConfigError, UsageError
from fpm_fleet.core.events import Event, Observer, step
from fpm_fleet.core.inventory import Pool
from fpm_fleet.core.redact import redact
from fpm_fleet.releases.origin import Origin
from fpm_fleet.source import build, git


@dataclass(frozen=True)
class Request:
    """The deploy's options: --release (empty: named from the commit), --ref, --source."""

    release: str = ""
    ref: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class Source:
    """One pool's release as it will be uploaded."""

    path: Path
    release: str
    origin: Origin | None = None


def directories(pools: tuple[Pool, ...], source: str | None) -> dict[str, Path]:
    """Each pool's source directory (--source, or the pool's `source`)."""
    if source and len(pools) > 1:
        raise UsageError("--source applies to one pool: add --pool NAME")
    out = {}
    for pool in pools:
        path = Path(source or pool.source)
        if not path.is_dir():
            raise ConfigError(f"source directory {path} of pool {pool.name} does not exist")
        out[pool.name] = path
    return out


def check_request(pools: tuple[Pool, ...], req: Request) -> None:
    """Refused before anything is read or run."""
    if req.ref is None and not req.release:
        raise UsageError("deploy needs --release NAME (the name of the new release: letters, "
                         "digits, '.', '_' and '-', e.g. --release v42) or --ref REF (a git "
                         "branch, tag or commit of the pool's `repository`)")
    if req.ref is not None:
        if req.source:
            raise UsageError("--ref and --source exclude each other: --ref exports the "
                             "pool's `repository`, --source names a directory")
        missing = [p.name for p in pools if not p.repository]
        if missing:
            raise UsageError(f"--ref needs the pool key `repository` (pool "
                             f"{', '.join(missing)} has none; or choose a pool with --pool)")
        git.check_ref(req.ref)


@contextmanager
def prepared(pools: tuple[Pool, ...], req: Request, obs: Observer,
             now: datetime.datetime | None = None) -> Iterator[dict[str, Source]]:
    """Every selected pool's release, ready to upload; the scratch copies are removed when
    the block ends."""
    check_request(pools, req)
    now = now or datetime.datetime.now(datetime.UTC)
    plain = {} if req.ref is not None else directories(pools, req.source)
    with tempfile.TemporaryDirectory(prefix="fpm-fleet-source-") as scratch:
        out = {}
        for pool in pools:
            work = Path(scratch) / pool.name
            work.mkdir()
            out[pool.name] = _one(pool, req, plain.get(pool.name), work, obs, now)
        yield out


def _one(pool: Pool, req: Request, directory: Path | None, work: Path, obs: Observer,
         now: datetime.datetime) -> Source:
    origin = None
    if directory is None:  # --ref
        directory, origin = _export(pool, req, work, obs)
    release = req.release or git.release_name(now, origin.commit if origin else "")
    if pool.build:
        if origin is None:  # the user's own directory: the build runs on a copy
            directory = build.copy(directory, work / "copy")
        build.run(directory, pool.build, _build_env(pool, release, origin), obs, pool.name)
    return Source(directory, release, origin)


def _export(pool: Pool, req: Request, work: Path, obs: Observer) -> tuple[Path, Origin]:
    assert req.ref is not None and pool.repository is not None  # check_request
    with step(obs, "local", "export", pool.name) as s:
        tree, origin = git.export(pool.repository, req.ref, work)
        s.detail = f"{redact(pool.repository)} {req.ref} = {origin.short}"
    if (tree / ".gitmodules").exists():
        obs.event(Event("warn", "local", "export", pool.name,
                        "the repository has submodules: they are not exported"))
    return tree, origin


def _build_env(pool: Pool, release: str, origin: Origin | None) -> dict[str, str]:
    """What a build may want to print into the app (a version page, a cache key)."""
    env = {"FPM_FLEET_POOL": pool.name, "FPM_FLEET_RELEASE": release}
    if origin is not None:
        env |= {"FPM_FLEET_COMMIT": origin.commit, "FPM_FLEET_REF": origin.ref}
    return env
