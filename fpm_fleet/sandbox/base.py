"""The base tree of the local fleet: one Debian 12 system built with debootstrap from the
mirror this machine's apt already uses, then reused (read-only) under every host's overlay.

It is a cache: built once (about two minutes), rebuilt only when the package list or the
customisation below changes (the stamp records both), kept by `sandbox.down` like apt's
own cache, removed by `sandbox.down --purge`.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from fpm_fleet.core.errors import FleetError

BASE_DIR = Path("/var/cache/fpm-fleet/sandbox-base")
SUITE = "bookworm"
DEPLOY_USER = "deploy"

# What a Debian 12 PHP host of ours has: systemd as init, Debian's own sshd, Apache or
# nginx (both installed; the sandbox enables the one a host is given) and PHP-FPM, the
# tools fpm-fleet drives remotely, and the Symfony components the example framework
# application is built on.
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "libpam-systemd", "openssh-server", "iproute2",
    "apache2", "nginx", "php8.2-fpm", "php8.2-cli", "libfcgi-bin", "sudo", "curl", "procps",
    "php-symfony-routing", "php-symfony-http-foundation", "php-symfony-dotenv",
)

# Run once in the new tree (chroot). Host keys and machine-id are removed so that every
# host gets its own; Debian's default site is disabled so that a pool's virtual host is
# the one answering the host's address, as an operator sets up a dedicated PHP host. nginx
# starts disabled and without Debian's default site: both servers want port 80, and a
# host runs the one the sandbox enables for it.
CUSTOMISE = f"""set -e
useradd --create-home --shell /bin/bash --password '*' {DEPLOY_USER}
printf '%s\\n' '{DEPLOY_USER} ALL=(root) NOPASSWD: ALL' > /etc/sudoers.d/{DEPLOY_USER}
chmod 0440 /etc/sudoers.d/{DEPLOY_USER}
a2dissite -q 000-default
rm -f /etc/nginx/sites-enabled/default
systemctl disable --quiet nginx.service
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
apt-get clean
"""


def stamp() -> str:
    """What the tree was built from; a different stamp means rebuild."""
    text = f"{SUITE}\n{' '.join(PACKAGES)}\n{CUSTOMISE}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def apt_mirror(files: Iterable[tuple[str, str]], suite: str = SUITE) -> str | None:
    """The Debian archive URI that apt uses for `suite` main, from (file name, text) pairs
    of /etc/apt/sources.list and sources.list.d (one-line and deb822 formats)."""
    for name, text in files:
        entries = _deb822(text) if name.endswith(".sources") else _one_line(text)
        for types, uris, suites, components in entries:
            if "deb" in types and suite in suites and "main" in components and uris:
                return uris[0]
    return None


def _one_line(text: str) -> list[tuple[list[str], list[str], list[str], list[str]]]:
    out = []
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 4:
            out.append(([words[0]], [words[1]], [words[2]], words[3:]))
    return out


def _deb822(text: str) -> list[tuple[list[str], list[str], list[str], list[str]]]:
    out = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, list[str]] = {}
        for line in block.splitlines():
            key, colon, value = line.partition(":")
            if colon and not line.startswith(("#", " ")):
                fields[key.strip().lower()] = value.split()
        if fields.get("enabled", ["yes"])[0].lower() == "no":
            continue
        out.append((fields.get("types", []), fields.get("uris", []),
                    fields.get("suites", []), fields.get("components", [])))
    return out


def machine_mirror() -> str:
    listed = sorted(Path("/etc/apt/sources.list.d").glob("*"))
    paths = [Path("/etc/apt/sources.list"),
             *(p for p in listed if p.suffix in (".list", ".sources"))]
    files = [(p.name, p.read_text()) for p in paths if p.is_file()]
    mirror = apt_mirror(files)
    if mirror is None:
        raise FleetError(f"sandbox: apt has no `{SUITE} main` source to build the hosts from")
    return mirror


def debootstrap_argv(target: Path, mirror: str) -> list[str]:
    return ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
            str(target), mirror]


def ensure(log: Path) -> tuple[Path, float]:
    """The base tree, built if missing or stale. Returns (path, seconds spent building)."""
    marker = BASE_DIR / ".fpm-fleet-stamp"
    if marker.is_file() and marker.read_text().strip() == stamp():
        return BASE_DIR, 0.0
    started = time.monotonic()
    work = BASE_DIR.with_name(BASE_DIR.name + ".new")
    shutil.rmtree(work, ignore_errors=True)
    work.parent.mkdir(parents=True, exist_ok=True)
    _logged(debootstrap_argv(work, machine_mirror()), log, "debootstrap of the base tree")
    _logged(["chroot", str(work), "sh", "-c", CUSTOMISE], log, "customising the base tree")
    (work / ".fpm-fleet-stamp").write_text(stamp() + "\n")
    shutil.rmtree(BASE_DIR, ignore_errors=True)
    work.rename(BASE_DIR)
    return BASE_DIR, time.monotonic() - started


def _logged(argv: list[str], log: Path, what: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(argv)}\n")
        fh.flush()
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise FleetError(f"sandbox: {what} failed (exit {proc.returncode}); see {log}")


def purge() -> list[str]:
    removed = []
    for path in (BASE_DIR, BASE_DIR.with_name(BASE_DIR.name + ".new")):
        if path.exists():
            shutil.rmtree(path)
            removed.append(f"removed {path}")
    return removed
