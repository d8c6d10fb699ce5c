"""The local test fleet: N real Debian 12 hosts booted with systemd as PID 1.

Every host is a systemd-nspawn container on an overlay of one shared base tree
(`sandbox_base`), in a network namespace of its own on a bridge (198.18.0.0/24), with its
own identity (hostname, machine-id, SSH host key), Debian's own ssh.service and
apache2.service, and a non-root deploy user whose sudo allows only fpm-fleet's own commands
(the sudoers file `fab setup`, logged in as root, installs). fpm-fleet drives it over SSH
exactly as a production server (`mode = "system"`). `systemctl reboot` inside a host
reboots it: its launcher (scripts/sandbox-host) boots it again, same address, same keys.

Everything `up` creates is found again by name (namespaces, links, launchers by pid file,
mounts and cgroups under recorded paths, files under the sandbox directories) and `down`
removes exactly that. The base tree is a cache, kept unless `down --purge`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fpm_fleet.core.errors import FleetError
from fpm_fleet.sandbox.base import DEPLOY_USER

PREFIX = "fpmf"
BRIDGE = f"{PREFIX}-br0"
SUBNET = "198.18.0"
GATEWAY = f"{SUBNET}.1"
LAUNCHER = Path(__file__).resolve().parents[2] / "scripts" / "sandbox-host"  # the checkout's
# The hosts' trees live outside the checkout: overlays want a real filesystem, and the
# checkout may sit anywhere (a path with spaces, a tmpfs).
HOSTS_DIR = Path("/var/tmp/fpm-fleet-sandbox")
BOOT_TIMEOUT = 60.0

LOCK_PATH = Path("/tmp/fpm-fleet-sandbox.lock")
LOCK_HELD = "FPM_FLEET_SANDBOX_LOCK_HELD"


@contextmanager
def exclusive(wait: bool = False, say: Callable[[str], None] | None = None,
              path: Path = LOCK_PATH) -> Iterator[None]:
    """One local fleet per machine: tests, benchmarks and a developer take turns on one lock.

    Busy: FleetError, or with `wait` block until it is free (telling `say` why). The holder
    marks its environment, so the `fab sandbox.*` commands it runs go through. Python opens
    the file close-on-exec, so daemons started meanwhile never inherit the lock.
    """
    if os.environ.get(LOCK_HELD) == "1":
        yield
        return
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise FleetError(f"sandbox: in use by another run (tests or benchmarks hold "
                                 f"{path}); try again when it ends") from None
            if say is not None:
                say(f"waiting for {path}: another sandbox user (tests?) holds it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        os.environ[LOCK_HELD] = "1"
        try:
            yield
        finally:
            os.environ.pop(LOCK_HELD, None)


@dataclass(frozen=True)
class SandboxHost:
    index: int
    base: Path = HOSTS_DIR

    @property
    def name(self) -> str:
        return f"h{self.index}"

    @property
    def netns(self) -> str:
        return f"{PREFIX}-h{self.index}"

    @property
    def veth(self) -> str:
        return f"{PREFIX}-h{self.index}"

    @property
    def address(self) -> str:
        return f"{SUBNET}.{10 + self.index}"

    @property
    def dir(self) -> Path:
        return self.base / "hosts" / self.name

    @property
    def root(self) -> Path:
        """The host's whole filesystem (the overlay's merged view), as seen from outside."""
        return self.dir / "root"

    @property
    def launcher_pid(self) -> Path:
        return self.dir / "launcher.pid"

    @property
    def cgroups_file(self) -> Path:
        """The cgroup directories the launcher made, one per line (for `down`)."""
        return self.dir / "cgroups"


def sh(*argv: str, check: bool = True,
       netns: str | None = None) -> subprocess.CompletedProcess[str]:
    if netns:
        argv = ("ip", "netns", "exec", netns, *argv)
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise FleetError(f"sandbox: {' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc


def require_root() -> None:
    if os.geteuid() != 0:
        raise FleetError("sandbox: needs root (network namespaces, overlays, containers)")
    for tool in ("ip", "ssh-keygen", "systemd-nspawn", "debootstrap", "nsenter", "mount"):
        if not shutil.which(tool):
            raise FleetError(f"sandbox: {tool} is missing; run the README's set-up command")


def namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split() and line.split()[0].startswith(f"{PREFIX}-h")]


def existing_hosts(base: Path = HOSTS_DIR) -> list[SandboxHost]:
    """Hosts that have a directory or a namespace (whatever state they are in)."""
    found = {int(n[len(PREFIX) + 2:]) for n in namespaces() if n[len(PREFIX) + 2:].isdigit()}
    hosts_dir = base / "hosts"
    if hosts_dir.is_dir():
        found |= {int(p.name[1:]) for p in hosts_dir.iterdir() if p.name[1:].isdigit()}
    return [SandboxHost(i, base) for i in sorted(found)]


# --- network -----------------------------------------------------------------------------------

def ensure_bridge() -> None:
    if sh("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")


def ensure_netns(host: SandboxHost) -> None:
    """The host's network card: its address is set from outside and survives its reboots."""
    if host.netns in namespaces():
        return
    sh("ip", "netns", "add", host.netns)
    sh("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0",
       "netns", host.netns)
    sh("ip", "link", "set", host.veth, "master", BRIDGE)
    sh("ip", "link", "set", host.veth, "up")
    sh("ip", "addr", "add", f"{host.address}/24", "dev", "eth0", netns=host.netns)
    sh("ip", "link", "set", "eth0", "up", netns=host.netns)
    sh("ip", "link", "set", "lo", "up", netns=host.netns)


# --- the host's filesystem and identity --------------------------------------------------------

def mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4] == target for line in fh)


def ensure_overlay(host: SandboxHost, base_tree: Path) -> None:
    """The host's own writable layer over the read-only base tree."""
    for sub in ("upper", "work", "root"):
        (host.dir / sub).mkdir(parents=True, exist_ok=True)
    if not mounted(host.root):
        options = (f"lowerdir={base_tree},upperdir={host.dir / 'upper'},"
                   f"workdir={host.dir / 'work'}")
        sh("mount", "-t", "overlay", "overlay", "-o", options, str(host.root))


def ensure_client_key(base: Path) -> Path:
    """The operator's key stays in the sandbox dir of the checkout; hosts get its public half."""
    key = base / "id_ed25519"
    if not key.exists():
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fpm-fleet-sandbox",
           "-f", str(key))
    return key


def write_identity(host: SandboxHost, client_pub: str) -> None:
    """What makes a copy of the base tree a machine of its own. Kept across reboots and
    repeated `up`s (the machine-id and host key are made once)."""
    etc = host.root / "etc"
    (etc / "hostname").write_text(f"{host.name}\n")
    (etc / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {host.name}\n"
                               f"{host.address} {host.name}\n")
    machine_id = etc / "machine-id"
    if not machine_id.read_text().strip():
        machine_id.write_text(uuid.uuid4().hex + "\n")
    key = etc / "ssh" / "ssh_host_ed25519_key"
    if not key.exists():
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host.name}",
           "-f", str(key))
    (etc / "ssh" / "sshd_config.d" / "fpm-fleet-sandbox.conf").write_text(
        "HostKey /etc/ssh/ssh_host_ed25519_key\n")
    for home, owner in ((host.root / "root", "root"),
                        (host.root / "home" / DEPLOY_USER, DEPLOY_USER)):
        _authorize(home, client_pub, _ids(etc, owner))
    restrict_sudo(etc)


def restrict_sudo(etc: Path) -> None:
    """The base tree gives the deploy user sudo for everything (the shared tree is kept as
    built); each host takes that away in its own layer, so that, as on a production host,
    the deploy user has only what `fab setup` (as root) installs: fpm-fleet's sudoers file."""
    (etc / "sudoers.d" / DEPLOY_USER).unlink(missing_ok=True)


def _ids(etc: Path, user: str) -> tuple[int, int]:
    """uid and gid of `user` in the host's own /etc/passwd (not the machine's)."""
    for line in (etc / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise FleetError(f"sandbox: the base tree has no user {user}")


def _authorize(home: Path, client_pub: str, ids: tuple[int, int]) -> None:
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(client_pub)
    for path in (ssh_dir, keys):
        os.chown(path, *ids)
    keys.chmod(0o600)


def known_hosts_line(host: SandboxHost) -> str:
    pub = (host.root / "etc" / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()
    return f"{host.address} {pub[0]} {pub[1]}\n"


# --- power -------------------------------------------------------------------------------------

def cgroup_dirs(self_cgroup: str, name: str, fs: Path = Path("/sys/fs/cgroup")) -> list[Path]:
    """Where the launcher of host `name` puts itself, below the cgroups of this process, in
    the hierarchies systemd needs (v2 or the `name=systemd` v1 one, plus memory and pids)."""
    dirs = []
    for line in self_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            hierarchy = fs / "unified" if (fs / "unified").is_dir() else fs
            if not (hierarchy / "cgroup.controllers").exists() and hierarchy == fs:
                continue  # a plain tmpfs of v1 hierarchies, not a cgroup2 root
        elif controllers in ("name=systemd", "memory", "pids"):
            hierarchy = fs / controllers.removeprefix("name=")
        else:
            continue
        if hierarchy.is_dir():
            dirs.append(hierarchy / path.lstrip("/") / f"{PREFIX}-{name}")
    return dirs


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("State:"):
                    return line.split()[1] not in ("Z", "X")
    except OSError:
        return False
    return False


def _pid_in(path: Path) -> int | None:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _alive(pid) else None


def launch(host: SandboxHost) -> None:
    """Power the host on (nothing happens if its launcher runs)."""
    if _pid_in(host.launcher_pid) is not None:
        return
    dirs = cgroup_dirs(Path("/proc/self/cgroup").read_text(), host.name)
    host.cgroups_file.write_text("".join(f"{d}\n" for d in dirs))
    with open(host.dir / "console.log", "ab") as log:
        proc = subprocess.Popen(["sh", str(LAUNCHER), host.name, str(host.root), host.netns,
                                 *map(str, dirs)], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    host.launcher_pid.write_text(f"{proc.pid}\n")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def leader(host: SandboxHost) -> int | None:
    """The host's PID 1 (systemd), as a pid of this machine: launcher -> nspawn -> init."""
    launcher = _pid_in(host.launcher_pid)
    if launcher is None:
        return None
    for nspawn in _children(launcher):
        for init in _children(nspawn):
            return init
    return None


def run_in(host: SandboxHost, *argv: str, timeout: float = 60
           ) -> subprocess.CompletedProcess[str]:
    """Run a command inside the host as its root (every namespace of its PID 1)."""
    pid = leader(host)
    if pid is None:
        raise FleetError(f"sandbox: {host.name} is not running")
    return subprocess.run(["nsenter", "-t", str(pid), "-a", "--", *argv], capture_output=True,
                          text=True, timeout=timeout, check=False)


def wait_booted(host: SandboxHost, timeout: float = BOOT_TIMEOUT) -> str:
    """Until sshd answers and systemd says the boot is over; returns its state (`running`,
    or `degraded` when a unit failed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if leader(host) is not None and _port_open(host.address, 22):
            state = run_in(host, "systemctl", "is-system-running", "--wait",
                           timeout=max(1.0, deadline - time.monotonic()))
            return state.stdout.strip()
        time.sleep(0.1)
    raise FleetError(f"sandbox: {host.name} did not boot within {timeout:g}s; see "
                     f"{host.dir / 'console.log'}")


def _port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def power_off(host: SandboxHost, timeout: float = 20) -> int:
    """An orderly shutdown (SIGTERM to nspawn: the host's systemd powers off); whatever is
    left after `timeout` is killed. Returns how many processes had to be killed."""
    launcher = _pid_in(host.launcher_pid)
    if launcher is not None:
        for nspawn in _children(launcher):
            with contextlib.suppress(ProcessLookupError):
                os.kill(nspawn, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(launcher) and time.monotonic() < deadline:
            time.sleep(0.05)
    left = _cgroup_pids(host)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(left)


def _recorded_cgroups(host: SandboxHost) -> list[Path]:
    try:
        return [Path(line) for line in host.cgroups_file.read_text().splitlines() if line]
    except OSError:
        return []


def _cgroup_pids(host: SandboxHost) -> list[int]:
    pids: set[int] = set()
    for top in _recorded_cgroups(host):
        for procs in top.rglob("cgroup.procs") if top.is_dir() else ():
            with contextlib.suppress(OSError):
                pids |= {int(p) for p in procs.read_text().split() if _alive(int(p))}
    return sorted(pids)


def _remove_cgroups(host: SandboxHost) -> None:
    for top in _recorded_cgroups(host):
        if not top.is_dir():
            continue
        for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                path.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


# --- inventory ---------------------------------------------------------------------------------

WEB_CHOICES = ("apache", "nginx", "mixed")


def web_of(web: str, index: int) -> str:
    """The web server of the index-th host (from 0): `mixed` alternates, Apache first."""
    if web not in WEB_CHOICES:
        raise FleetError(f"sandbox: --web must be one of {', '.join(WEB_CHOICES)}")
    if web == "mixed":
        return ("apache", "nginx")[index % 2]
    return web


def inventory(hosts: list[SandboxHost], base: Path, replicas: int = 2,
              strategy: str = "surge", web: str = "apache") -> str:
    lines = [
        "# Written by `fab sandbox.up`: the local test fleet (Debian 12 hosts with systemd).",
        "# Use it with: FABRIC_INVENTORY=sandbox/hosts.toml fab <task>",
        f"log_dir = {_toml(base / 'logs')}",
        "",
        "[defaults]",
        f'user = "{DEPLOY_USER}"',
        "# fab setup needs full root; the deploy user has only fpm-fleet's sudoers lines",
        'setup_user = "root"',
        f"known_hosts = {_toml(base / 'known_hosts')}",
        f"identity_file = {_toml(base / 'id_ed25519')}",
        "connect_timeout = 5",
        "",
    ]
    for i, h in enumerate(hosts):
        lines += ["[[hosts]]", f'name = "{h.name}"', f'address = "{h.address}"']
        lines += [f'web = "{web_of(web, i)}"', ""] if web_of(web, i) != "apache" else [""]
    lines += ["[pools.www]", f"replicas = {replicas}", f'strategy = "{strategy}"',
              "max_children = 8",
              f"source = {_toml(base / 'build' / 'www')}", 'shared = ["storage"]', ""]
    return "\n".join(lines)


def _toml(value: object) -> str:
    """A TOML basic string (JSON's escaping is valid TOML for these characters)."""
    return json.dumps(str(value))


# --- teardown ----------------------------------------------------------------------------------

def remove_host(host: SandboxHost) -> list[str]:
    """Power off, unmount, remove cgroups, namespace and files of one host."""
    done = []
    killed = power_off(host)
    if killed:
        done.append(f"{host.name}: killed {killed} processes that outlived the shutdown")
    if mounted(host.root):
        sh("umount", str(host.root), check=False)
    _remove_cgroups(host)
    if host.netns in namespaces():
        sh("ip", "netns", "del", host.netns, check=False)
    if host.dir.exists():
        shutil.rmtree(host.dir)
    done.append(f"removed host {host.name}")
    return done


def down(base: Path) -> list[str]:
    """Remove every host, link and file of the sandbox; harmless to repeat."""
    done = []
    for host in existing_hosts():
        done += remove_host(host)
    for link in _our_links():
        sh("ip", "link", "del", link, check=False)
        done.append(f"removed link {link}")
    for path in (base, HOSTS_DIR):
        if path.exists():
            shutil.rmtree(path)
            done.append(f"removed {path}")
    return done


def _our_links() -> list[str]:
    out = sh("ip", "-o", "link", "show", check=False).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
             if line.count(":") >= 2]
    return [n for n in names if n.startswith(f"{PREFIX}-")]


def leftovers(base: Path) -> list[str]:
    """What of the sandbox still exists (for tests and for `down` to report)."""
    found = [f"netns {n}" for n in namespaces()]
    found += [f"link {n}" for n in _our_links()]
    found += [f"directory {p}" for p in (base, HOSTS_DIR) if p.exists()]
    with open("/proc/self/mountinfo") as fh:
        found += [f"mount {line.split()[4]}" for line in fh
                  if line.split()[4].startswith(str(HOSTS_DIR))]
    found += [f"cgroup {p}" for p in _our_cgroup_dirs()]
    found += [f"process {pid} {_cmdline(pid)[:80]}" for pid in _all_pids()
              if _in_our_cgroup(pid) and _alive(pid)]
    return found


def leftovers_after(base: Path, seconds: float = 10) -> list[str]:
    """What of the sandbox is still there after at most `seconds`: a host's processes die a
    moment after `down` returns, so a check at once would report them."""
    deadline = time.monotonic() + seconds
    left = leftovers(base)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = leftovers(base)
    return left


def _our_cgroup_dirs() -> list[Path]:
    dirs = cgroup_dirs(Path("/proc/self/cgroup").read_text(), "*")
    return [p for d in dirs for p in d.parent.glob(d.name)]


def _in_our_cgroup(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    return re.search(rf"/{PREFIX}-h\d+(/|$)", text, re.M) is not None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]
