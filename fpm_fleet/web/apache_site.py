"""Pure builders of the commands that install and check Apache's site and service (Debian's
apache2, driven by systemd). `fab setup` and `fab check` run them (provision.py)."""

from __future__ import annotations

from fpm_fleet.host.layout import Layout
from fpm_fleet.remote.shell import join, q


def apache_test() -> str:
    return "apache2ctl configtest"


def apache_ctl(action: str) -> str:
    """start / reload (graceful) / enable Debian's apache2.service through systemd."""
    if action not in ("start", "reload", "enable"):
        raise ValueError(action)
    return f"systemctl {action} --quiet apache2.service"


def apache_running() -> str:
    """Exit 0 when Debian's apache2.service is active."""
    return "systemctl is-active --quiet apache2.service"


APACHE_MODULES = ("proxy", "proxy_fcgi", "proxy_balancer", "lbmethod_bybusyness",
                  "lbmethod_byrequests", "slotmem_shm", "authz_host", "rewrite", "auth_basic",
                  "authn_core", "authn_file", "authz_user")


def apache_enable_site() -> str:
    """The modules and the site, enabled the Debian way."""
    return f"a2enmod -q {join(APACHE_MODULES)} >/dev/null && a2ensite -q fpm-fleet >/dev/null"


APACHE_SITE_LINK = "/etc/apache2/sites-enabled/fpm-fleet.conf"


def apache_site_enabled() -> str:
    return f"test -L {q(APACHE_SITE_LINK)}"


def apache_site_test(enabled_before: bool) -> str:
    """Enable the site and test Apache's config (install_checked's test). A site that was not
    enabled before is disabled again when the test fails, so a first setup whose config is
    refused leaves no sites-enabled link to a file that is then removed."""
    test = f"{apache_enable_site()} && {apache_test()}"
    if enabled_before:
        return test
    return f"{{ {test}; }} || {{ rc=$?; a2dissite -q fpm-fleet >/dev/null 2>&1; exit $rc; }}"


NO_RELEASE = "no-release"


def vhost_request(layout: Layout, url: str, server_name: str, timeout: float = 5) -> str:
    """GET `url` from one pool's virtual host (Host: server_name) through the host's own
    Apache; prints the HTTP status (000 when nothing answered), or NO_RELEASE before the
    pool's first deploy, when there is nothing to serve yet."""
    curl = join(["curl", "-sS", "-g", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}",
                 "--max-time", f"{timeout:g}", "-H", f"Host: {server_name}", url])
    return f"if [ -e {q(layout.current_release)} ]; then {curl}; else echo {NO_RELEASE}; fi"


def tcp_listening(port: int) -> str:
    """Exit 0 when a socket listens on TCP `port`, on any address (read from the kernel's
    table: no tool to install, and every process of the host's network namespace counts)."""
    return (f"cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p={port:04X} "
            "'$4 == \"0A\" && substr($2, index($2, \":\") + 1) == p {f = 1} END {exit !f}'")


def apache_modules_loaded() -> str:
    """The LoadModule lines of Debian's enabled modules (what Apache loads at its next
    start or graceful). Not `apache2ctl -M`: as the deploy user it cannot create its
    runtime directory under /run/apache2 and lists nothing."""
    return "cat /etc/apache2/mods-enabled/*.load 2>/dev/null"
