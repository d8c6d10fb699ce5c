"""The local test fleet: N hosts as network namespaces on 198.18.0.0/24 (DESIGN.md section 5).

Each host gets its own sshd (own host key), and later, through `fab setup` over SSH, its own
Apache instance and PHP-FPM replicas, all started inside its namespace. Everything `up`
creates is recorded by name (namespaces, links, processes by namespace, files under the
sandbox directory, the sudo test user) and `down` removes exactly that.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import FleetError

PREFIX = "fpmf"
BRIDGE = f"{PREFIX}-br0"
SUBNET = "198.18.0"
GATEWAY = f"{SUBNET}.1"
SUDO_USER = "fpmfleet"
SUDOERS = Path("/etc/sudoers.d/fpm-fleet-sandbox")
SSHD = "/usr/sbin/sshd"
# What the hosts themselves use (sshd configs and keys, authorized_keys, the fpm-fleet roots)
# lives here rather than in the project: PHP workers and Apache run as www-data and the sudo
# test user logs in, and none of them may traverse the directory the project was cloned to.
HOSTS_DIR = Path("/var/tmp/fpm-fleet-sandbox")


LOCK_PATH = Path("/tmp/fpm-fleet-sandbox.lock")
LOCK_HELD = "FPM_FLEET_SANDBOX_LOCK_HELD"


@contextmanager
def exclusive(wait: bool = False) -> Iterator[None]:
    """One local fleet per machine: tests, benchmarks and a developer take turns on one lock.

    The holder marks its environment, so the `fab sandbox.*` commands it runs go through.
    """
    if os.environ.get(LOCK_HELD) == "1":
        yield
        return
    with open(LOCK_PATH, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise FleetError(f"sandbox: in use by another run (tests or benchmarks hold "
                                 f"{LOCK_PATH}); try again when it ends") from None
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
        """The fpm-fleet root of this host (every host has its own: the filesystem is shared)."""
        return self.dir / "srv"

    @property
    def ssh_dir(self) -> Path:
        return self.dir / "ssh"


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
        raise FleetError("sandbox: needs root (network namespaces, sshd, Apache)")
    for tool in ("ip", SSHD, "ssh-keygen", "apache2", "cgi-fcgi", "unshare", "curl"):
        if not shutil.which(tool):
            raise FleetError(f"sandbox: {tool} is missing; run the README's set-up command")


def namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split() and line.split()[0].startswith(f"{PREFIX}-h")]


# --- network -----------------------------------------------------------------------------------

def ensure_bridge() -> None:
    if sh("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")


def ensure_netns(host: SandboxHost) -> None:
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


# --- ssh ---------------------------------------------------------------------------------------

def ensure_client_key(base: Path) -> Path:
    """The operator's key stays in the project's sandbox dir; its public half goes to hosts."""
    key = base / "id_ed25519"
    if not key.exists():
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fpm-fleet-sandbox",
           "-f", str(key))
    HOSTS_DIR.mkdir(mode=0o755, exist_ok=True)
    shutil.copyfile(f"{key}.pub", HOSTS_DIR / "authorized_keys")
    os.chmod(HOSTS_DIR / "authorized_keys", 0o644)
    return key


def sshd_config(host: SandboxHost) -> str:
    return "\n".join([
        f"ListenAddress {host.address}",
        "Port 22",
        f"HostKey {host.ssh_dir / 'ssh_host_ed25519_key'}",
        f"PidFile {host.ssh_dir / 'sshd.pid'}",
        f"AuthorizedKeysFile {HOSTS_DIR / 'authorized_keys'}",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "PrintMotd no",
        "MaxSessions 64",
        "MaxStartups 64:30:128",
        "LogLevel ERROR",
        "Subsystem sftp internal-sftp",
        # The machine's own ~/.bashrc (shared by every sandbox host) may be slow to source;
        # a sandbox login gets a home of its own.
        f"SetEnv HOME={HOSTS_DIR / 'home'}",
        "",
    ])


def ensure_sshd(host: SandboxHost) -> None:
    host.ssh_dir.mkdir(parents=True, exist_ok=True)
    (HOSTS_DIR / "home").mkdir(exist_ok=True)
    key = host.ssh_dir / "ssh_host_ed25519_key"
    if not key.exists():
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", str(key))
    config = host.ssh_dir / "sshd_config"
    config.write_text(sshd_config(host))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    if _alive_pid(host.ssh_dir / "sshd.pid") is None:
        sh(SSHD, "-f", str(config), netns=host.netns)
    _wait_port(host)


def _alive_pid(pidfile: Path) -> int | None:
    """The pid in pidfile if that process runs (a zombie does not: PID 1 may reap late)."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _alive(pid) else None


def _wait_port(host: SandboxHost, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = sh("bash", "-c", f"exec 3<>/dev/tcp/{host.address}/22", check=False)
        if probe.returncode == 0:
            return
        time.sleep(0.1)
    raise FleetError(f"sandbox: sshd of {host.name} does not listen on {host.address}:22")


def known_hosts_line(host: SandboxHost) -> str:
    pub = (host.ssh_dir / "ssh_host_ed25519_key.pub").read_text().split()
    return f"{host.address} {pub[0]} {pub[1]}\n"


def ensure_sudo_user() -> None:
    """An unprivileged login with passwordless sudo, to prove non-root deploys."""
    try:
        pwd.getpwnam(SUDO_USER)
    except KeyError:
        sh("useradd", "--system", "--no-create-home", "--home-dir", str(HOSTS_DIR), "-p", "*",
           "--shell", "/bin/sh", SUDO_USER)
    SUDOERS.write_text(f"{SUDO_USER} ALL=(root) NOPASSWD: ALL\n")
    os.chmod(SUDOERS, 0o440)


# --- inventory ---------------------------------------------------------------------------------

def inventory(hosts: list[SandboxHost], base: Path, replicas: int = 2) -> str:
    lines = [
        "# Written by `fab sandbox.up`: the local test fleet (network namespaces).",
        "# Use it with: FABRIC_INVENTORY=sandbox/hosts.toml fab <task>",
        f'log_dir = "{base / "logs"}"',
        "",
        "[defaults]",
        'user = "root"',
        f'known_hosts = "{base / "known_hosts"}"',
        f'identity_file = "{base / "id_ed25519"}"',
        "connect_timeout = 5",
        "",
        "[defaults.apache]",
        'mode = "instance"',
        "",
    ]
    for h in hosts:
        lines += ["[[hosts]]", f'name = "{h.name}"', f'address = "{h.address}"',
                  f'root = "{h.root}"', f'apache = {{ listen = "{h.address}:80" }}', ""]
    lines += ["[pools.www]", f"replicas = {replicas}", "max_children = 8",
              f'source = "{base / "build" / "www"}"', 'shared = ["storage"]', ""]
    return "\n".join(lines)


# --- teardown ----------------------------------------------------------------------------------

def kill_netns_processes(netns: str, timeout: float = 10) -> int:
    """SIGTERM, then SIGKILL, every process inside one of our namespaces (ours by pid)."""
    pids = _netns_pids(netns)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5)
        while time.monotonic() < deadline and _netns_pids(netns):
            time.sleep(0.1)
        pids = _netns_pids(netns)
        if not pids:
            break
    return len(pids)


def _netns_pids(netns: str) -> list[int]:
    out = sh("ip", "netns", "pids", netns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit() and _alive(int(p))]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("State:"):
                    return line.split()[1] not in ("Z", "X")
    except OSError:
        return False
    return False


def down(base: Path) -> list[str]:
    """Remove every namespace, link, process and file of the sandbox; harmless to repeat."""
    done = []
    for netns in namespaces():
        left = kill_netns_processes(netns)
        sh("ip", "netns", "del", netns, check=False)
        done.append(f"removed {netns}" + (f" ({left} processes would not die)" if left else ""))
    for link in _our_links():
        sh("ip", "link", "del", link, check=False)
        done.append(f"removed link {link}")
    if SUDOERS.exists():
        SUDOERS.unlink()
    try:
        pwd.getpwnam(SUDO_USER)
        sh("userdel", SUDO_USER, check=False)
        done.append(f"removed user {SUDO_USER}")
    except KeyError:
        pass
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
    needles = (str(base), str(HOSTS_DIR))
    for pid in _all_pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(n in cmd for n in needles) and _alive(pid):
            found.append(f"process {pid} {cmd.strip()[:80]}")
    return found


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]
