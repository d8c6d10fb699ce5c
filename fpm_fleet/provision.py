"""`fab setup` (idempotent provisioning) and `fab check` (preflight) for one host."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, TypeVar

from fpm_fleet.core.errors import FleetError, RemoteError, RemoteResult
from fpm_fleet.core.inventory import Fleet, Host, Pool
from fpm_fleet.host.layout import (
    MANAGER_HTPASSWD,
    MANAGER_LOGIN,
    MANAGER_NETRC,
    STOP_SCRIPT,
    Layout,
)
from fpm_fleet.host.pool import HostPool
from fpm_fleet.releases.manifest import parse_checksums
from fpm_fleet.remote import shell
from fpm_fleet.remote.command import Command
from fpm_fleet.remote.runner import Runner, ask_by_running
from fpm_fleet.remote.shell import q
from fpm_fleet.remote.ssh import SSHRunner, connect
from fpm_fleet.render import (
    RenderedFile,
    apache_files,
    fpm_files,
    nginx_files,
    nginx_templates,
    stop_script_files,
    sudo_commands,
    sudoers,
    unit_file,
)
from fpm_fleet.web import apache_site, nginx_site, server, upstream

T = TypeVar("T")


@dataclass
class SetupReport:
    host: str
    changes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def setup_login(host: Host) -> Host:
    """The host as `fab setup` reaches it: logged in as setup_user (root, or a user with sudo
    for everything), while `host.user` stays the account the host is set up for."""
    return dataclasses.replace(host, user=host.setup_user, sudo=host.setup_user != "root")


def setup_connector(host: Host) -> Runner:
    """Runner's connector for `fab setup`: the SSH session of setup_user."""
    login = setup_login(host)
    return SSHRunner(login, connect(login))


class AsRoot:
    """A runner that runs every command as root: `fab setup` writes /etc and systemd
    units, so it needs full root; no other task does."""

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.host = inner.host

    def run(self, command: str, what: str, *, check: bool = True,
            timeout: float | None = None) -> RemoteResult:
        return self.inner.run(shell.as_root(command, self.host.sudo), what, check=check,
                              timeout=timeout)

    def stream(self, command: str, what: str, source: IO[bytes], *,
               timeout: float | None = None) -> tuple[RemoteResult, int]:
        return self.inner.stream(shell.as_root(command, self.host.sudo), what, source,
                                 timeout=timeout)

    def ask(self, cmd: Command[T]) -> T:
        return ask_by_running(self, cmd)


def require_root(runner: Runner, host: Host) -> None:
    """Fail first, and say how to fix it, when the setup login cannot become root."""
    result = runner.run("id -u", "check for root", check=False)
    if result.stdout.strip() == "0":
        return
    login = runner.host.user
    why = (result.stderr.strip().splitlines() or ["not root"])[-1][:120]
    raise FleetError(f"{host.name}: fab setup needs full root, and {login} cannot become root "
                     f"({why}); set setup_user = \"root\" in the inventory (or a user with "
                     f"sudo for every command): after setup, {host.user} needs only the "
                     "commands of /etc/sudoers.d/fpm-fleet")


def directories(fleet: Fleet, host: Host) -> list[PurePosixPath]:
    dirs: list[PurePosixPath] = [PurePosixPath(host.root)]
    for pool in fleet.pools:
        dirs += Layout.of(host, pool).directories()
    return dirs


def create_missing_dirs(paths: list[PurePosixPath]) -> str:
    """Create what is missing and print each directory created (so a rerun prints nothing)."""
    return (f"for d in {shell.join(paths)}; do [ -d \"$d\" ] || "
            f"{{ mkdir -p -- \"$d\" && chmod 0755 -- \"$d\" && printf '%s\\n' \"$d\"; }}; done")


def hand_over(layout: Layout, user: str) -> str:
    """Give the deploy user what it writes, print every path changed (a rerun prints nothing).

    The pool directory stays root's, group-writable for the user's group and sticky: the
    user creates and replaces its own entries there (current.release, previous.release), but
    cannot rename or remove root's conf/ and run/. shared/ itself only: what the PHP workers
    wrote in it stays theirs.
    """
    mode = "755" if user == "root" else "1775"
    pool, who = q(layout.dir), q(user)
    links = shell.join([layout.current_release, layout.previous_release])
    whole = [d for d in layout.deploy_owned() if d != layout.shared]
    # the pool's lock, which this very setup holds (taken as root): a rerun is no change
    held = q(f"{layout.state / 'lock'}*")
    mismatch = (f"\\( ! -user {who} -o ! -group \"$g\" \\) "
                f"-exec chown -h {who}:\"$g\" -- {{}} + -print")
    return (f"g=$(id -gn -- {who}) || {{ echo {q(f'no user {user} on this host')} >&2; "
            f"exit 1; }}; [ \"$(stat -c %U:%G:%a -- {pool})\" = \"root:$g:{mode}\" ] || "
            f"{{ chown root:\"$g\" -- {pool} && chmod {mode} -- {pool} && echo {pool}; }}; "
            f"set -- {shell.join(whole)}; for l in {links}; do [ ! -L \"$l\" ] || "
            f"set -- \"$@\" \"$l\"; done; "
            f"find \"$@\" ! -path {held} {mismatch}; "
            f"find {q(layout.shared)} -maxdepth 0 {mismatch}")


def join_groups(user: str, groups: list[str]) -> str:
    """Put the deploy user in Apache's group and the pools' PHP groups, print each group
    joined. Apache's group reaches the replica sockets (0660), which the deploy user probes
    without root; it runs the code the PHP workers run anyway, and as a member of their
    group it can make a shared item writable for them in a hook (`chgrp www-data storage/
    && chmod g+ws storage/`) without root."""
    return (f"for g in {shell.join(groups)}; do id -nG -- {q(user)} | tr ' ' '\\n' | "
            f"grep -qx -- \"$g\" || {{ usermod -a -G \"$g\" -- {q(user)} && "
            "printf '%s\\n' \"$g\"; }; done")


LINGER_DIR = PurePosixPath("/var/lib/systemd/linger")  # logind: one file per lingering user


def keep_user_manager(user: str) -> str:
    """Have logind keep `user`'s systemd manager running between logins (linger); prints the
    user when it changed that. Without it, every fpm-fleet run that finds no session of the
    user open starts the manager on each host at the first command and stops it ten seconds
    after the last: 60-80 ms more on the first command, and the CPU of both, per host."""
    return (f"[ -e {q(LINGER_DIR / user)} ] || {{ loginctl enable-linger -- {q(user)} && "
            f"printf '%s\\n' {q(user)}; }}")


def manager_credential(user: str, apache_group: str) -> str:
    """balancer-manager's credential: a random password made on the host (it never leaves
    it, and never appears on a command line), kept in a netrc readable by root and the
    deploy user's group only, and Apache's bcrypt hash of it. Prints what it wrote."""
    netrc, htpasswd = q(MANAGER_NETRC), q(MANAGER_HTPASSWD)
    password = f"awk '$1 == \"default\" {{print $5}}' {netrc}"
    return (f"g=$(id -gn -- {q(user)}) || exit 1; mkdir -p -m 0755 -- {q(MANAGER_NETRC.parent)}"
            f" && if [ ! -s {netrc} ]; then (umask 077; p=$(tr -dc A-Za-z0-9 < /dev/urandom "
            f"| head -c 40); printf 'default login %s password %s\\n' {MANAGER_LOGIN} \"$p\" "
            f"> {netrc}.tmp) && mv -f -- {netrc}.tmp {netrc} && echo {netrc}; fi && "
            f"chown root:\"$g\" -- {netrc} && chmod 0640 -- {netrc} && "
            f"if ! {password} | htpasswd -v -i {htpasswd} {MANAGER_LOGIN} >/dev/null 2>&1; then "
            f"{password} | htpasswd -c -i -B {htpasswd}.tmp {MANAGER_LOGIN} >/dev/null && "
            f"chown root:{q(apache_group)} -- {htpasswd}.tmp && chmod 0640 -- {htpasswd}.tmp && "
            f"mv -f -- {htpasswd}.tmp {htpasswd} && echo {htpasswd}; fi")


def changed_files(runner: Runner, files: list[RenderedFile]) -> list[RenderedFile]:
    result = runner.run(shell.checksums([f.path for f in files]), "checksum installed configs")
    remote = parse_checksums(result.stdout)
    return [f for f in files
            if remote.get(str(f.path)) != hashlib.sha256(f.text.encode()).hexdigest()]


def upload_text(runner: Runner, path: PurePosixPath | str, text: str, mode: str = "0644") -> None:
    runner.stream(shell.write_stdin(path, mode), f"write {path}", io.BytesIO(text.encode()))


NO_SYSTEMD = ("this host was not booted with systemd: fpm-fleet runs every replica as a "
              "systemd service (restarted after a crash, started at boot) and supports only "
              "systemd hosts")


def setup_host(login: Runner, fleet: Fleet, host: Host) -> SetupReport:
    """Directories (the deploy user's own), the sudoers file, balancer-manager's credential,
    replica configs and services, the Apache site; each reloaded only on change, so a second
    run changes nothing. `login` is connected as setup_user; everything runs as root."""
    runner = AsRoot(login)
    require_root(runner, host)
    if not runner.run(shell.has_systemd(), "check for systemd", check=False).ok:
        raise FleetError(f"{host.name}: {NO_SYSTEMD}")
    report = SetupReport(host.name)
    created = runner.run(create_missing_dirs(directories(fleet, host)), "create directories")
    report.changes += [f"created {d}" for d in created.stdout.split("\n") if d]
    for pool in fleet.pools:
        given = runner.run(hand_over(Layout.of(host, pool), host.user), f"give {pool.name} to "
                       f"{host.user}").stdout.split("\n")
        if any(given):
            report.changes.append(f"gave {len([g for g in given if g])} paths of "
                                  f"{pool.name} to {host.user}")
    if runner.run(keep_user_manager(host.user), f"linger {host.user}").stdout.strip():
        report.changes.append(f"kept the systemd manager of {host.user} running (linger)")
    if host.user != "root":
        groups = sorted({host.web_server.group, *(pool.group for pool in fleet.pools)})
        joined = runner.run(join_groups(host.user, groups), f"add {host.user} to groups")
        report.changes += [f"added {host.user} to group {g}" for g in joined.stdout.split()]
    if not server.is_nginx(host):
        made = runner.run(manager_credential(host.user, host.apache.group),
                          "balancer-manager credential")
        report.changes += [f"wrote {f}" for f in made.stdout.split("\n") if f]
    for pool in fleet.pools:
        for f in changed_files(runner, fpm_files(host, pool)):
            upload_text(runner, f"{f.path}{shell.STAGED}", f.text)
            test = f"{shell.q(pool.php_fpm)} -t --fpm-config {shell.q(f.path)}"
            runner.run(shell.install_checked([f.path], test), f"install {f.path}")
            report.changes.append(f"wrote {f.path}")
    report.changes += _setup_services(runner, fleet, host)
    if server.is_nginx(host):
        report.changes += _setup_nginx(runner, fleet, host)
    else:
        report.changes += _setup_apache(runner, fleet, host)
    # Last: it may replace a broader rule of the same name that this very run relies on.
    report.changes += _setup_sudoers(runner, fleet, host)
    return report


def _setup_sudoers(runner: Runner, fleet: Fleet, host: Host) -> list[str]:
    """What the deploy user may run as root; checked by visudo before it is installed."""
    rendered = sudoers(fleet, host)
    if rendered is None or not changed_files(runner, [rendered]):
        return []
    upload_text(runner, f"{rendered.path}{shell.STAGED}", rendered.text, rendered.mode)
    try:
        runner.run(shell.install_sudoers(rendered.path), f"install {rendered.path}")
    except RemoteError as exc:
        raise FleetError(f"{host.name}: the sudoers file fails visudo -cf and was not "
                         f"installed: {exc.result.stderr.strip()}") from None
    return [f"wrote {rendered.path}"]


def _setup_services(runner: Runner, fleet: Fleet, host: Host) -> list[str]:
    """One template unit per pool; every replica's service enabled (started at boot)."""
    units = [*stop_script_files(), *(unit_file(host, pool) for pool in fleet.pools)]
    changed = changed_files(runner, units)
    if changed:
        runner.run(f"mkdir -p -- {shell.q(STOP_SCRIPT.parent)}", "create the replica helper dir")
    for f in changed:
        upload_text(runner, f.path, f.text, f.mode)
    if changed:
        runner.run(shell.daemon_reload(), "systemctl daemon-reload")
    # at boot: the first set (a surge pool's standby set is enabled by the rollout that
    # starts it, and disabled by the one that stops it)
    names = [Layout.of(host, p).unit(n) for p in fleet.pools for n in p.sets[0]]
    enabled = runner.run(shell.enable_units(names), "enable replica services")
    return ([f"wrote {f.path}" for f in changed]
            + [f"enabled {u}" for u in enabled.stdout.split() if u])


def _setup_apache(runner: Runner, fleet: Fleet, host: Host) -> list[str]:
    changes = [f"stopped and disabled {u}" for u in runner.run(
        nginx_site.switch_off(nginx_site.NGINX_UNIT), "switch nginx off").stdout.split()]
    written = _install_site(runner, host, apache_files(fleet, host), "Apache",
                            apache_site.apache_site_enabled(), apache_site.apache_site_test)
    changes += written
    runner.run(apache_site.apache_ctl("enable"), "enable apache2.service")
    running = runner.run(apache_site.apache_running(), "is Apache running", check=False).ok
    if not running:
        runner.run(apache_site.apache_ctl("start"), "start Apache")
        changes.append("started Apache")
    elif written:
        runner.run(apache_site.apache_ctl("reload"), "reload Apache")
        changes.append("reloaded Apache (graceful)")
    return changes


def _setup_nginx(runner: Runner, fleet: Fleet, host: Host) -> list[str]:
    """The helper and the upstream templates, each pool's upstream (states kept from the
    running nginx), the site (tested, put back on failure); Apache switched off (both want
    the pools' port), nginx enabled, started or reloaded on change."""
    changes = _install_files(runner, nginx_templates(fleet, host))
    states = _running_states(runner, fleet, host)
    for pool in fleet.pools:
        out = runner.run(nginx_site.write_upstream(pool, states[pool.name]),
                         f"write the upstream of {pool.name}")
        changes += [f"wrote {f}" for f in out.stdout.split()]
    changes += _install_site(runner, host, nginx_files(fleet, host), "nginx",
                             nginx_site.site_enabled(), nginx_site.site_test)
    changes += [f"stopped and disabled {u}" for u in runner.run(
        nginx_site.switch_off(nginx_site.APACHE_UNIT), "switch Apache off").stdout.split()]
    unit = nginx_site.NGINX_UNIT
    runner.run(nginx_site.service_ctl(unit, "enable"), f"enable {unit}")
    if not runner.run(nginx_site.service_running(unit), "is nginx running", check=False).ok:
        runner.run(nginx_site.service_ctl(unit, "start"), "start nginx")
        changes.append("started nginx")
    elif changes:
        runner.run(nginx_site.service_ctl(unit, "reload"), "reload nginx")
        changes.append("reloaded nginx (graceful)")
    runner.run(nginx_site.wait_members(list(fleet.pools)), "read the running members back")
    return changes


def _install_site(runner: Runner, host: Host, files: list[RenderedFile], label: str,
                  enabled: str, test: Callable[[bool], str]) -> list[str]:
    """The web server's config files that changed: staged, then installed only if the
    server's own test (`test`, told whether the site is enabled: `enabled` says) passes
    with them, else put back and refused. Returns what was written."""
    changed = changed_files(runner, files)
    if not changed:
        return []
    for f in changed:
        upload_text(runner, f"{f.path}{shell.STAGED}", f.text)
    on = runner.run(enabled, "is the site enabled", check=False).ok
    try:
        runner.run(shell.install_checked([f.path for f in changed], test(on)),
                   f"install {label} config")
    except RemoteError as exc:
        raise FleetError(f"{host.name}: the new {label} config fails its test and was not "
                         f"installed: {exc.result.stderr.strip()}") from None
    return [f"wrote {f.path}" for f in changed]


def _install_files(runner: Runner, files: list[RenderedFile]) -> list[str]:
    """Root-owned files nothing tests (templates, helpers): written when they changed."""
    changed = changed_files(runner, files)
    for d in sorted({str(f.path.parent) for f in changed}):
        runner.run(f"mkdir -p -- {shell.q(d)}", f"create {d}")
    for f in changed:
        upload_text(runner, f.path, f.text, f.mode)
    return [f"wrote {f.path}" for f in changed]


def _running_states(runner: Runner, fleet: Fleet, host: Host) -> dict[str, dict[int, str]]:
    """Each pool's member states to write: what the running nginx has for the slots it
    knows (a rollout's work is never undone by a setup), the initial state for the others."""
    out = {}
    for pool in fleet.pools:
        wanted = upstream.initial(pool)
        try:
            running = upstream.states(server.read(HostPool(runner, host, pool)), pool)
        except FleetError:
            running = {}
        wanted.update({n: s for n, s in running.items() if n in wanted})
        out[pool.name] = wanted
    return out


@dataclass(frozen=True)
class Check:
    host: str
    name: str
    ok: bool
    detail: str


REQUIRED_MODULES = ("proxy_module", "proxy_fcgi_module", "proxy_balancer_module",
                    "lbmethod_bybusyness_module", "slotmem_shm_module", "rewrite_module")


def check_host(runner: Runner, fleet: Fleet, host: Host) -> list[Check]:
    """Preflight of one reachable host; each line says what is wrong and where."""
    checks = [Check(host.name, "ssh", True, f"{host.user}@{host.address}:{host.port}")]
    systemd = runner.run(shell.has_systemd(), "check for systemd", check=False).ok
    checks.append(Check(host.name, "systemd", systemd, "PID 1" if systemd else NO_SYSTEMD))
    checks.append(_check_sudo(runner, fleet, host))
    checks.append(_check_linger(runner, host))
    tools = runner.run(shell.probe_tools(server.binary(host)),
                       "probe tools", check=False)
    for line in tools.stdout.splitlines():
        name, _, where = line.partition("\t")
        checks.append(Check(host.name, name, where != "-", where if where != "-" else "missing"))
    checks += _check_web(runner, fleet, host)
    return checks


def _check_web(runner: Runner, fleet: Fleet, host: Host) -> list[Check]:
    """The web server, its port, and each pool through it."""
    checks = _check_nginx(runner, host) if server.is_nginx(host) else _check_apache(runner, host)
    checks.append(_check_listen(runner, host))
    for pool in fleet.pools:
        fpm = runner.run(f"test -x {shell.q(pool.php_fpm)}", "check php-fpm", check=False)
        checks.append(Check(host.name, f"{pool.name}: php-fpm", fpm.ok, pool.php_fpm))
        at = HostPool(runner, host, pool)
        checks += [_check_owner(at), _check_members(at), _check_vhost(at)]
    return checks


def _check_sudo(runner: Runner, fleet: Fleet, host: Host) -> Check:
    """A deploy user needs sudo for exactly the commands of /etc/sudoers.d/fpm-fleet."""
    if not host.sudo:
        return Check(host.name, "root", True, "via root login")
    argvs = [tuple(c.split()) for c in sudo_commands(fleet, host)]
    denied = runner.run(shell.sudo_denied(argvs), "check sudo", check=False).stdout.split("\n")
    denied = [d for d in denied if d]
    if denied:
        return Check(host.name, "root", False,
                     f"{host.user} may not run via sudo: {denied[0]}"
                     + (f" (and {len(denied) - 1} more)" if len(denied) > 1 else "")
                     + "; run fab setup")
    return Check(host.name, "root", True, f"via sudo: the {len(argvs)} commands of "
                 "/etc/sudoers.d/fpm-fleet")


def _check_linger(runner: Runner, host: Host) -> Check:
    """Whether the login user's systemd manager outlives its sessions (fab setup enables
    that). Said, never a failure: without it every run is slower, not wrong."""
    kept = runner.run(f"test -e {q(LINGER_DIR / host.user)}", "check linger", check=False).ok
    return Check(host.name, "linger", True,
                 f"the systemd manager of {host.user} stays running between logins" if kept
                 else f"not kept: each run's first login of {host.user} starts a systemd "
                      "manager (60-80 ms); fab setup keeps it running")


def _check_owner(at: HostPool) -> Check:
    """Uploads, hooks and state files run as the login user, in directories it owns."""
    host, pool = at.host, at.pool
    out = at.runner.run(shell.not_writable(at.layout.deploy_owned()), "check writable dirs",
                        check=False)
    missing = [d for d in out.stdout.split("\n") if d]
    detail = (f"{host.user} may write releases/, shared/, state/, incoming/" if not missing
              else f"{host.user} may not write {', '.join(missing)}; run fab setup")
    return Check(host.name, f"{pool.name}: owner", out.ok and not missing, detail)


def _check_apache(runner: Runner, host: Host) -> list[Check]:
    mods = runner.run(apache_site.apache_modules_loaded(), "list Apache modules", check=False)
    missing = [m for m in REQUIRED_MODULES if m not in mods.stdout]
    return [Check(host.name, "apache modules", not missing,
                  "missing " + ", ".join(missing) if missing else "proxy, fcgi, balancer")]


def _check_nginx(runner: Runner, host: Host) -> list[Check]:
    """nginx's service runs, and Apache's does not take the pools' port from it."""
    unit = nginx_site.NGINX_UNIT
    active = runner.run(nginx_site.service_running(unit), "is nginx running", check=False).ok
    apache_on = runner.run(nginx_site.service_running(nginx_site.APACHE_UNIT),
                           "is Apache running", check=False).ok
    return [Check(host.name, "nginx", active and not apache_on,
                  f"{unit} active" if active and not apache_on else
                  f"{unit} is not active; run fab setup" if not active else
                  "apache2.service runs too (both want the pools' port); run fab setup")]


def _check_listen(runner: Runner, host: Host) -> Check:
    """`setup` succeeding does not prove the web server listens where the inventory says."""
    web = host.web_server
    port = web.port
    ok = runner.run(apache_site.tcp_listening(port), "check listen port", check=False).ok
    detail = (f"port {port} ({web.listen})" if ok else
              f"nothing listens on port {port} (listen = {web.listen}); run fab setup")
    return Check(host.name, f"{server.name(host)} listen", ok, detail)


def vhost_url(host: Host, pool: Pool) -> str:
    web = host.web_server
    return f"http://{web.local_address}:{web.port}{pool.health_path}"


def _check_vhost(at: HostPool) -> Check:
    """The pool answers through the web server, as a client would reach it (its
    server_name)."""
    url = vhost_url(at.host, at.pool)
    result = at.runner.run(apache_site.vhost_request(at.layout, url, at.pool.server_name),
                           f"request {at.pool.name} through {server.label(at.host)}",
                           check=False)
    return vhost_check(at.host.name, at.pool, url, result)


def vhost_check(host: str, pool: Pool, url: str, result: RemoteResult) -> Check:
    """Judge the answer of apache_site.vhost_request: only a 200 passes."""
    name = f"{pool.name}: vhost"
    asked = f"GET {url} (Host: {pool.server_name})"
    answer = result.stdout.strip()
    if answer == apache_site.NO_RELEASE:
        return Check(host, name, True, "no release deployed yet: not requested")
    if answer == "200":
        return Check(host, name, True, f"{asked}: 200")
    if answer.isdigit() and answer != "000":
        return Check(host, name, False, f"{asked}: HTTP {answer}")
    reason = result.stderr.strip().splitlines()[-1:] or ["no answer"]
    return Check(host, name, False, f"{asked}: {reason[0][:120]}")


def _check_members(at: HostPool) -> Check:
    host, pool = at.host, at.pool
    name = f"{pool.name}: " + ("nginx members" if server.is_nginx(host) else "balancer-manager")
    try:
        bal = server.read(at)
    except FleetError as exc:
        return Check(host.name, name, False, str(exc).removeprefix(f"{host.name}: "))
    want = {pool.member(n) for n in pool.replica_numbers}
    have = {m.identity for m in bal.members}
    if want != have:
        return Check(host.name, name, False,
                     f"members {sorted(have)} differ from inventory {sorted(want)}")
    where = (f"upstream fpm_fleet_{pool.balancer}" if server.is_nginx(host)
             else f"balancer://{pool.balancer}")
    return Check(host.name, name, True, f"{where}: {len(have)} members")
