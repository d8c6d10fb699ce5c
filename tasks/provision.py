"""`fab setup` (idempotent provisioning) and `fab check` (preflight) for one host."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from . import balancer, shell
from .errors import FleetError, RemoteError, RemoteResult
from .inventory import Fleet, Host, Pool
from .layout import STOP_SCRIPT, Layout
from .manifest import parse_checksums
from .remote import Executor
from .render import RenderedFile, apache_files, fpm_files, stop_script, unit_file


@dataclass
class SetupReport:
    host: str
    changes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def directories(fleet: Fleet, host: Host) -> list[PurePosixPath]:
    dirs: list[PurePosixPath] = [PurePosixPath(host.root)]
    for pool in fleet.pools:
        dirs += Layout.of(host, pool).directories()
    return dirs


def create_missing_dirs(paths: list[PurePosixPath]) -> str:
    """Create what is missing and print each directory created (so a rerun prints nothing)."""
    return (f"for d in {shell.join(paths)}; do [ -d \"$d\" ] || "
            f"{{ mkdir -p -- \"$d\" && chmod 0755 -- \"$d\" && printf '%s\\n' \"$d\"; }}; done")


def changed_files(ex: Executor, files: list[RenderedFile]) -> list[RenderedFile]:
    result = ex.run(shell.checksums([f.path for f in files]), "checksum installed configs")
    remote = parse_checksums(result.stdout)
    return [f for f in files
            if remote.get(str(f.path)) != hashlib.sha256(f.text.encode()).hexdigest()]


def upload_text(ex: Executor, path: PurePosixPath | str, text: str, mode: str = "0644") -> None:
    ex.stream(shell.write_stdin(path, mode), f"write {path}", io.BytesIO(text.encode()))


NO_SYSTEMD = ("this host was not booted with systemd: fpm-fleet runs every replica as a "
              "systemd service (restarted after a crash, started at boot) and supports only "
              "systemd hosts")


def setup_host(ex: Executor, fleet: Fleet, host: Host) -> SetupReport:
    """Directories, replica configs and services, the Apache site; each reloaded only on
    change, so a second run changes nothing."""
    if not ex.run(shell.has_systemd(), "check for systemd", check=False).ok:
        raise FleetError(f"{host.name}: {NO_SYSTEMD}")
    report = SetupReport(host.name)
    created = ex.run(create_missing_dirs(directories(fleet, host)), "create directories")
    report.changes += [f"created {d}" for d in created.stdout.split("\n") if d]
    for pool in fleet.pools:
        for f in changed_files(ex, fpm_files(host, pool)):
            upload_text(ex, f"{f.path}{shell.STAGED}", f.text)
            test = f"{shell.q(pool.php_fpm)} -t --fpm-config {shell.q(f.path)}"
            ex.run(shell.install_checked([f.path], test), f"install {f.path}")
            report.changes.append(f"wrote {f.path}")
    report.changes += _setup_services(ex, fleet, host)
    report.changes += _setup_apache(ex, fleet, host)
    return report


def _setup_services(ex: Executor, fleet: Fleet, host: Host) -> list[str]:
    """One template unit per pool; every replica's service enabled (started at boot)."""
    units = [stop_script(), *(unit_file(host, pool) for pool in fleet.pools)]
    changed = changed_files(ex, units)
    if changed:
        ex.run(f"mkdir -p -- {shell.q(STOP_SCRIPT.parent)}", "create the replica helper dir")
    for f in changed:
        upload_text(ex, f.path, f.text, f.mode)
    if changed:
        ex.run(shell.daemon_reload(), "systemctl daemon-reload")
    names = [Layout.of(host, p).unit(n) for p in fleet.pools for n in p.replica_numbers]
    enabled = ex.run(shell.enable_units(names), "enable replica services")
    return ([f"wrote {f.path}" for f in changed]
            + [f"enabled {u}" for u in enabled.stdout.split() if u])


def _setup_apache(ex: Executor, fleet: Fleet, host: Host) -> list[str]:
    changes = []
    changed = changed_files(ex, apache_files(fleet, host))
    if changed:
        for f in changed:
            upload_text(ex, f"{f.path}{shell.STAGED}", f.text)
        test = f"{shell.apache_enable_site()} && {shell.apache_test()}"
        try:
            ex.run(shell.install_checked([f.path for f in changed], test),
                   "install Apache config")
        except RemoteError as exc:
            raise FleetError(f"{host.name}: the new Apache config fails its test and was not "
                             f"installed: {exc.result.stderr.strip()}") from None
        changes += [f"wrote {f.path}" for f in changed]
    ex.run(shell.apache_ctl("enable"), "enable apache2.service")
    running = ex.run(shell.apache_running(), "is Apache running", check=False).ok
    if not running:
        ex.run(shell.apache_ctl("start"), "start Apache")
        changes.append("started Apache")
    elif changed:
        ex.run(shell.apache_ctl("reload"), "reload Apache")
        changes.append("reloaded Apache (graceful)")
    return changes


@dataclass(frozen=True)
class Check:
    host: str
    name: str
    ok: bool
    detail: str


REQUIRED_MODULES = ("proxy_module", "proxy_fcgi_module", "proxy_balancer_module",
                    "lbmethod_bybusyness_module", "slotmem_shm_module", "rewrite_module")


def check_host(ex: Executor, fleet: Fleet, host: Host) -> list[Check]:
    """Preflight of one reachable host; each line says what is wrong and where."""
    checks = [Check(host.name, "ssh", True, f"{host.user}@{host.address}:{host.port}")]
    systemd = ex.run(shell.has_systemd(), "check for systemd", check=False).ok
    checks.append(Check(host.name, "systemd", systemd, "PID 1" if systemd else NO_SYSTEMD))
    uid = ex.run("id -u", "check root", check=False)
    how = "sudo" if host.sudo else "root login"
    checks.append(Check(host.name, "root", uid.stdout.strip() == "0",
                        f"via {how}" if uid.stdout.strip() == "0"
                        else f"not root via {how}: {uid.stderr.strip()[:80]}"))
    tools = ex.run(shell.probe_tools(), "probe tools", check=False)
    for line in tools.stdout.splitlines():
        name, _, where = line.partition("\t")
        checks.append(Check(host.name, name, where != "-", where if where != "-" else "missing"))
    checks += _check_apache(ex, fleet, host)
    return checks


def _check_apache(ex: Executor, fleet: Fleet, host: Host) -> list[Check]:
    mods = ex.run(shell.apache_modules_loaded(), "list Apache modules", check=False)
    missing = [m for m in REQUIRED_MODULES if m not in mods.stdout]
    checks = [Check(host.name, "apache modules", not missing,
                    "missing " + ", ".join(missing) if missing else "proxy, fcgi, balancer")]
    checks.append(_check_listen(ex, host))
    for pool in fleet.pools:
        fpm = ex.run(f"test -x {shell.q(pool.php_fpm)}", "check php-fpm", check=False)
        checks.append(Check(host.name, f"{pool.name}: php-fpm", fpm.ok, pool.php_fpm))
        checks.append(_check_members(ex, host, pool))
        checks.append(_check_vhost(ex, host, pool))
    return checks


def _check_listen(ex: Executor, host: Host) -> Check:
    """`setup` succeeding does not prove Apache listens where the inventory says."""
    port = host.apache.port
    ok = ex.run(shell.tcp_listening(port), "check listen port", check=False).ok
    detail = (f"port {port} ({host.apache.listen})" if ok else
              f"nothing listens on port {port} (listen = {host.apache.listen}); run fab setup")
    return Check(host.name, "apache listen", ok, detail)


def vhost_url(host: Host, pool: Pool) -> str:
    apache = host.apache
    return f"http://{apache.local_address}:{apache.port}{pool.health_path}"


def _check_vhost(ex: Executor, host: Host, pool: Pool) -> Check:
    """The pool answers through Apache, as a client would reach it (its server_name)."""
    url = vhost_url(host, pool)
    result = ex.run(shell.vhost_request(Layout.of(host, pool), url, pool.server_name),
                    f"request {pool.name} through Apache", check=False)
    return vhost_check(host.name, pool, url, result)


def vhost_check(host: str, pool: Pool, url: str, result: RemoteResult) -> Check:
    """Judge the answer of shell.vhost_request: only a 200 passes."""
    name = f"{pool.name}: vhost"
    asked = f"GET {url} (Host: {pool.server_name})"
    answer = result.stdout.strip()
    if answer == shell.NO_RELEASE:
        return Check(host, name, True, "no release deployed yet: not requested")
    if answer == "200":
        return Check(host, name, True, f"{asked}: 200")
    if answer.isdigit() and answer != "000":
        return Check(host, name, False, f"{asked}: HTTP {answer}")
    reason = result.stderr.strip().splitlines()[-1:] or ["no answer"]
    return Check(host, name, False, f"{asked}: {reason[0][:120]}")


def _check_members(ex: Executor, host: Host, pool: Pool) -> Check:
    name = f"{pool.name}: balancer-manager"
    try:
        bal = balancer.read(ex, host, pool)
    except FleetError as exc:
        return Check(host.name, name, False, str(exc).removeprefix(f"{host.name}: "))
    want = {pool.member(n) for n in pool.replica_numbers}
    have = {m.identity for m in bal.members}
    if want != have:
        return Check(host.name, name, False,
                     f"members {sorted(have)} differ from inventory {sorted(want)}")
    return Check(host.name, name, True, f"balancer://{pool.balancer}: {len(have)} members")
