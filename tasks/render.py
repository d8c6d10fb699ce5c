"""Render the files fpm-fleet installs on a host from templates/ (pure: text in, text out)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath

import jinja2

from .inventory import Fleet, Host, Pool
from .layout import ApacheLayout, Layout

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

INSTANCE_MODULES = (
    ("mpm_event", "mpm_event"), ("authz_core", "authz_core"), ("authz_host", "authz_host"),
    ("mime", "mime"), ("dir", "dir"), ("proxy", "proxy"), ("proxy_fcgi", "proxy_fcgi"),
    ("proxy_balancer", "proxy_balancer"), ("slotmem_shm", "slotmem_shm"),
    ("lbmethod_byrequests", "lbmethod_byrequests"),
    ("lbmethod_bybusyness", "lbmethod_bybusyness"), ("rewrite", "rewrite"),
)


@dataclass(frozen=True)
class Site:
    pool: Pool
    layout: Layout


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
    if ApacheLayout.of(host).is_instance:
        return ()  # the instance's main config listens itself
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


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True,
                             autoescape=False)
    env.filters["ini"] = _ini
    return env


def apache_files(fleet: Fleet, host: Host) -> list[RenderedFile]:
    apache = ApacheLayout.of(host)
    sites = [Site(pool, Layout.of(host, pool)) for pool in fleet.pools]
    site = _env().get_template("apache-site.conf.j2").render(
        host=host, sites=sites, listens=site_listens(host))
    files = [RenderedFile(apache.site, site)]
    if apache.is_instance:
        main = _env().get_template("apache-instance.conf.j2").render(
            host=host, apache=apache, modules=INSTANCE_MODULES)
        files.insert(0, RenderedFile(apache.main_config, main))
    return files


def fpm_files(host: Host, pool: Pool) -> list[RenderedFile]:
    layout = Layout.of(host, pool)
    template = _env().get_template("fpm-replica.conf.j2")
    return [RenderedFile(layout.fpm_conf(n), template.render(pool=pool, layout=layout, n=n,
                                                              apache=host.apache))
            for n in pool.replica_numbers]
