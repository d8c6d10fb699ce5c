"""Render the files fpm-fleet installs on a host from templates/ (pure: text in, text out)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import PurePosixPath

import jinja2

from fpm_fleet.core.inventory import NGINX, Fleet, Host, Pool
from fpm_fleet.core.resources import SHELL_SCRIPTS, SUDOERS_TEMPLATE, TEMPLATES
from fpm_fleet.host.layout import (
    APACHE_SITE,
    MANAGER_HTPASSWD,
    MANAGER_LOGIN,
    NGINX_MEMBERS,
    NGINX_PARAMS,
    NGINX_SITE,
    NGINX_SOCKET,
    STOP_SCRIPT,
    SUDOERS,
    Layout,
    nginx_template,
    nginx_upstream,
)
from fpm_fleet.remote import shell


@dataclass(frozen=True)
class Site:
    pool: Pool
    layout: Layout

    @property
    def upstream(self) -> PurePosixPath:
        """nginx: the file holding the pool's upstream (written by the helper)."""
        return nginx_upstream(self.pool.name)

    @property
    def upstream_name(self) -> str:
        """nginx: the pool's `upstream` block, fastcgi_pass's target."""
        return f"fpm_fleet_{self.pool.balancer}"


@dataclass(frozen=True)
class Listen:
    """One `Listen` the site adds, left out while any of `unless_loaded` is loaded."""

    address: str
    unless_loaded: tuple[str, ...] = ()


# What Debian's /etc/apache2/ports.conf listens on, on every address: port 80, and 443
# while mod_ssl or mod_gnutls is loaded. A second `Listen` for a covered port is either
# a syntax error (same port) or, worse, passes configtest and then fails to bind
# (`Listen 80` + `Listen 198.18.0.11:80`: EADDRINUSE), stopping Apache at the graceful.
DEBIAN_PORTS: dict[int, tuple[str, ...]] = {80: (), 443: ("ssl_module", "mod_gnutls.c")}


def site_listens(host: Host) -> tuple[Listen, ...]:
    """The `Listen` lines the system site must add for the pools and balancer-manager."""
    manager = Listen(f"127.0.0.1:{host.apache.manager_port}")
    port = host.apache.port
    if port not in DEBIAN_PORTS:
        return (Listen(host.apache.listen), manager)
    if DEBIAN_PORTS[port]:
        return (Listen(host.apache.listen, DEBIAN_PORTS[port]), manager)
    return (manager,)


@dataclass(frozen=True)
class RenderedFile:
    path: PurePosixPath
    text: str
    mode: str = "0644"


def _ini(value: object) -> str:
    """Quote a php-fpm ini value (paths may hold spaces)."""
    text = str(value)
    if any(c in text for c in '"\n'):
        raise ValueError(f"cannot write {text!r} into a php-fpm config")
    return f'"{text}"'


def _unit(value: object) -> str:
    """A path for a systemd unit file: `%` is a specifier there (the inventory refuses
    whitespace and quotes in paths)."""
    text = str(value)
    if any(c.isspace() or c in "\"'\\" for c in text):
        raise ValueError(f"cannot write {text!r} into a systemd unit")
    return text.replace("%", "%%")


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True,
                             autoescape=False)
    env.filters["ini"] = _ini
    env.filters["unit"] = _unit
    return env


def apache_files(fleet: Fleet, host: Host) -> list[RenderedFile]:
    sites = [Site(pool, Layout.of(host, pool)) for pool in fleet.pools]
    site = _env().get_template("apache-site.conf.j2").render(
        host=host, sites=sites, listens=site_listens(host), htpasswd=MANAGER_HTPASSWD,
        manager_login=MANAGER_LOGIN)
    return [RenderedFile(APACHE_SITE, site)]


def nginx_files(fleet: Fleet, host: Host) -> list[RenderedFile]:
    """nginx's site (every pool's server block) and the FastCGI parameters it includes; each
    pool's upstream is written by the helper from nginx_templates."""
    sites = [Site(pool, Layout.of(host, pool)) for pool in fleet.pools]
    site = _env().get_template("nginx-site.conf.j2").render(
        host=host, sites=sites, listen=host.nginx.listen, params=NGINX_PARAMS,
        upstream_dir=nginx_upstream("x").parent)
    params = _env().get_template("nginx-fastcgi.conf.j2").render()
    return [RenderedFile(NGINX_PARAMS, params), RenderedFile(NGINX_SITE, site)]


def _fails(pool: Pool) -> str:
    """A failed connect takes a member out for `retry` seconds (Apache's retry); 0: never."""
    return f"max_fails=1 fail_timeout={pool.retry}s" if pool.retry else "max_fails=0"


def nginx_templates(fleet: Fleet, host: Host) -> list[RenderedFile]:
    """Per pool, the root-owned template of its upstream, and the helper that fills it in."""
    template = _env().get_template("nginx-upstream.conf.j2")
    files = [RenderedFile(nginx_template(pool.name), template.render(
        pool=pool, layout=Layout.of(host, pool), upstream=nginx_upstream(pool.name),
        upstream_name=Site(pool, Layout.of(host, pool)).upstream_name, fails=_fails(pool),
        members_socket=NGINX_SOCKET)) for pool in fleet.pools]
    helper = (SHELL_SCRIPTS / "nginx-members.sh").read_text()
    return [*files, RenderedFile(NGINX_MEMBERS, helper, "0755")]


def web_unit(host: Host) -> str:
    """The systemd service of the host's web server."""
    return "nginx.service" if host.web == NGINX else "apache2.service"


def fpm_files(host: Host, pool: Pool) -> list[RenderedFile]:
    layout = Layout.of(host, pool)
    template = _env().get_template("fpm-replica.conf.j2")
    return [RenderedFile(layout.fpm_conf(n), template.render(pool=pool, layout=layout, n=n,
                                                              web=host.web_server))
            for n in pool.replica_numbers]


def unit_file(host: Host, pool: Pool) -> RenderedFile:
    """The pool's systemd template unit (one service per replica)."""
    layout = Layout.of(host, pool)
    text = _env().get_template("fpm-replica.service.j2").render(
        pool=pool, layout=layout, stop_script=STOP_SCRIPT, web_unit=web_unit(host))
    return RenderedFile(layout.unit_file, text)


def stop_script_files() -> list[RenderedFile]:
    """What a replica service runs when it stops (templates/sh/replica-stop.sh), with the
    functions it sources from beside itself (replica-lib.sh, shared with the probe); the
    library first, so the script never runs without it."""
    lib = SHELL_SCRIPTS / shell.REPLICA_LIB
    return [RenderedFile(STOP_SCRIPT.with_name(lib.name), lib.read_text()),
            RenderedFile(STOP_SCRIPT, (SHELL_SCRIPTS / "replica-stop.sh").read_text(), "0755")]


# Characters sudoers reads as syntax inside a command line (they would need a backslash).
SUDOERS_SPECIAL = set("\\,:=#\"'*?[]!\n")


def sudo_commands(fleet: Fleet, host: Host) -> list[str]:
    """Every command the deploy user runs through sudo, as the sudoers file names it."""
    argvs = [shell.replica_command(verb, Layout.of(host, pool).unit(n))
             for pool in fleet.pools for n in pool.replica_numbers
             for verb in shell.REPLICA_VERBS]
    if host.web == NGINX:
        argvs += [shell.NGINX_CHECK, *(shell.nginx_members(pool.name) for pool in fleet.pools)]
    else:
        argvs += [shell.APACHE_CONFIGTEST, shell.APACHE_GRACEFUL]
    lines = [" ".join((shell.SUDO_PATHS[argv[0]], *argv[1:])) for argv in argvs]
    for line in lines:
        if SUDOERS_SPECIAL & set(line):
            raise ValueError(f"cannot write {line!r} into a sudoers file")
    return lines


def sudoers(fleet: Fleet, host: Host) -> RenderedFile | None:
    """/etc/sudoers.d/fpm-fleet for the inventory's user; None for a root login (no sudo)."""
    if not host.sudo:
        return None
    text = _env().from_string(SUDOERS_TEMPLATE.read_text()).render(
        host=host.name, user=host.user, commands=sudo_commands(fleet, host))
    return RenderedFile(SUDOERS, text, "0440")
