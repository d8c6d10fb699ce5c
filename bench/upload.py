"""Upload cost: fpm-fleet's verified delta upload (fpm_fleet.releases.store.upload) of a large
release,
first deploy and one-file-changed deploy, against a plain `tar -czf - | ssh tar -xzf -`.

The releases are the demo app plus N ~10 KB filler files (fpm_fleet.sandbox.demo.build, the same as
`fab sandbox.build --files N`); the second build differs only where the demo files carry the
release name. Uploads go to the first sandbox host, under the deploy lock, and are removed
afterwards; nothing is activated. Both log in as the inventory's user (`deploy` on the
local fleet) and write as that user (no sudo), into the same filesystem of the host.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from fpm_fleet.core.inventory import Fleet, Host, Pool
from fpm_fleet.host import lock
from fpm_fleet.host.layout import Layout
from fpm_fleet.host.pool import HostPool
from fpm_fleet.releases import manifest
from fpm_fleet.releases import store as release
from fpm_fleet.releases.manifest import Manifest
from fpm_fleet.remote import ssh as remote
from fpm_fleet.remote.shell import q
from fpm_fleet.sandbox import demo
from fpm_fleet.streams import pump

from .errors import BenchError
from .sandbox import SANDBOX

NAMES = ("bench-a", "bench-b")


@dataclass
class Transfer:
    method: str
    files_sent: int
    bytes_sent: int
    seconds: float
    detail: str = ""


@dataclass
class UploadBench:
    host: str = ""
    files: int = 0
    size_bytes: int = 0
    changed_files: int = 0
    scan_s: float = 0.0
    transfers: list[Transfer] = field(default_factory=list)


def run(fleet: Fleet, files: int, say: Callable[[str], None]) -> UploadBench:
    host, pool = fleet.hosts[0], fleet.pools[0]
    scratch = SANDBOX / "bench-upload"
    try:
        say(f"upload: building two releases of {files} filler files")
        sources = [demo.build(scratch / name, name, filler_files=files) for name in NAMES]
        started = time.monotonic()
        manifests = [manifest.scan(src) for src in sources]
        bench = UploadBench(host.name, len(manifests[0].files), manifests[0].size,
                            changed_files(*manifests),
                            round((time.monotonic() - started) / 2, 2))
        say("upload: fpm-fleet, first deploy and one file changed")
        bench.transfers += fpm_fleet_uploads(host, pool, sources, manifests)
        say("upload: plain tar over ssh")
        dest = Layout.of(host, pool).incoming / "bench-tar"  # the deploy user's own
        bench.transfers.append(plain_tar(sources[0], host, dest))
        return bench
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def changed_files(old: Manifest, new: Manifest) -> int:
    """Files that are new or whose content differs."""
    before = {e.path: e.digest for e in old.files}
    return sum(1 for e in new.files if before.get(e.path) != e.digest)


def fpm_fleet_uploads(host: Host, pool: Pool, sources: list[Path],
                      manifests: list[Manifest]) -> list[Transfer]:
    with remote.session(host) as runner:
        at = HostPool(runner, host, pool)
        with lock.locked(at, "bench/run upload"):
            try:
                first = release.upload(at, sources[0], manifests[0], NAMES[0], base=None)
                second = release.upload(at, sources[1], manifests[1], NAMES[1],
                                        base=NAMES[0])
            finally:
                release.remove(at, NAMES)
    return [_transfer("fpm-fleet, first deploy", first),
            _transfer("fpm-fleet, one file changed", second)]


def _transfer(method: str, up: release.Upload) -> Transfer:
    return Transfer(method, up.sent_files, up.bytes_sent, round(up.seconds, 2),
                    f"{up.linked_files} hard-linked from the previous release, verified")


def ssh_argv(host: Host, command: str) -> list[str]:
    """OpenSSH with the inventory's key and known_hosts, strict host-key checking."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-p", str(host.port)]
    if host.identity_file:
        argv += ["-o", "IdentitiesOnly=yes", "-i", host.identity_file]
    if host.known_hosts:
        argv += ["-o", f"UserKnownHostsFile={host.known_hosts}"]
    return [*argv, f"{host.user}@{host.address}", command]


def tar_extract(dest: PurePosixPath) -> str:
    """The receiving end of a plain tar deploy: as the login user (as fpm-fleet's own upload
    does), into a fresh directory."""
    return f"mkdir -p {q(dest)} && tar -xzf - -C {q(dest)}"


def count_files(dest: PurePosixPath) -> str:
    return f"find {q(dest)} -type f | wc -l"


def plain_tar(source: Path, host: Host, dest: PurePosixPath) -> Transfer:
    """`tar -czf - -C SRC . | ssh HOST 'tar -xzf - -C DEST'`, bytes counted in between;
    the files that landed are counted on the host."""
    count = sum(1 for p in source.rglob("*") if p.is_file())
    try:
        started = time.monotonic()
        sent = _pipe(["tar", "-czf", "-", "-C", str(source), "."],
                     ssh_argv(host, tar_extract(dest)))
        seconds = time.monotonic() - started
        landed = _ssh_int(host, count_files(dest))
    finally:
        subprocess.run(ssh_argv(host, f"rm -rf -- {q(dest)}"), check=False,
                       capture_output=True, timeout=60)
    if landed != count:
        raise BenchError(f"plain tar: {landed} of {count} files arrived in {host.name}:{dest}")
    return Transfer("plain tar -czf | ssh, tar -xzf (every deploy)", count, sent,
                    round(seconds, 2), "everything, every time; not verified")


def _ssh_int(host: Host, command: str) -> int:
    proc = subprocess.run(ssh_argv(host, command), capture_output=True, text=True, timeout=60,
                          check=False)
    try:
        return int(proc.stdout.strip())
    except ValueError:
        raise BenchError(f"{host.name}: {command!r} exited {proc.returncode}: "
                         f"{proc.stderr.strip()}") from None


def _pipe(producer: list[str], consumer: list[str]) -> int:
    """Run producer | consumer through this process, counting the bytes."""
    src = subprocess.Popen(producer, stdout=subprocess.PIPE)
    dst = subprocess.Popen(consumer, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    assert src.stdout is not None and dst.stdin is not None
    sent = 0
    try:
        sent = pump(src.stdout, dst.stdin.write)
    except BrokenPipeError:
        pass  # the consumer died: its exit code says why
    finally:
        with contextlib.suppress(BrokenPipeError):
            dst.stdin.close()
        src.stdout.close()
    codes = (src.wait(timeout=300), dst.wait(timeout=300))
    if any(codes):
        err = dst.stderr.read().decode(errors="replace") if dst.stderr else ""
        raise BenchError(f"{' '.join(producer)} | ssh ...: exit codes {codes}: {err.strip()}")
    return sent
