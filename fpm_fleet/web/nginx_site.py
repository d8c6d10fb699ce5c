"""Pure builders of the commands that install and check nginx's site and service (Debian's
nginx, driven by systemd). `fab setup` and `fab check` run them (provision.py) on hosts
with `web = "nginx"`; Apache's are in web/apache_site.py."""

from __future__ import annotations

from collections.abc import Mapping

from fpm_fleet.core.inventory import Pool
from fpm_fleet.host.layout import NGINX_SITE, NGINX_SITE_LINK
from fpm_fleet.remote import shell
from fpm_fleet.remote.shell import q
from fpm_fleet.web import upstream

NGINX_UNIT = "nginx.service"
APACHE_UNIT = "apache2.service"


def nginx_test() -> str:
    return "nginx -t -q"


def service_ctl(unit: str, action: str) -> str:
    """start / reload (graceful) / enable a web server's service through systemd."""
    if action not in ("start", "reload", "enable"):
        raise ValueError(action)
    return f"systemctl {action} --quiet {q(unit)}"


def service_running(unit: str) -> str:
    return f"systemctl is-active --quiet {q(unit)}"


def switch_off(unit: str) -> str:
    """Stop and disable the other web server (both want the pools' port); print its name
    when it ran or was enabled (so a rerun prints nothing). Absent: nothing to do."""
    return (f"if systemctl is-enabled --quiet {q(unit)} 2>/dev/null || "
            f"systemctl is-active --quiet {q(unit)}; then "
            f"systemctl disable --now --quiet {q(unit)} && echo {q(unit)}; fi")


def site_enabled() -> str:
    return f"test -L {q(NGINX_SITE_LINK)}"


def site_test(enabled_before: bool) -> str:
    """Enable the site and test nginx's config (install_checked's test); a site that was not
    enabled before is disabled again when the test fails (no link to a removed file)."""
    link = f"ln -sfn {q(NGINX_SITE)} {q(NGINX_SITE_LINK)}"
    test = f"{link} && {nginx_test()}"
    if enabled_before:
        return test
    return f"{{ {test}; }} || {{ rc=$?; rm -f -- {q(NGINX_SITE_LINK)}; exit $rc; }}"


def write_upstream(pool: Pool, wanted: Mapping[int, str]) -> str:
    """fab setup (as root): write the pool's upstream from its template with `wanted`, tested,
    not loaded; prints the file when it changed."""
    return (f"printf '%s\\n' {q(upstream.stdin_lines(wanted))} | "
            f"{shell.join([shell.NGINX_MEMBERS, '--setup', pool.name])}")


def wait_members(pools: list[Pool], seconds: float = 10) -> str:
    """After nginx started or reloaded: until the running nginx answers every pool's
    members (the master loads the new configuration after `systemctl reload` returned)."""
    ticks = int(seconds * 10)
    checks = " && ".join(f"{upstream.read_command(p)} 2>/dev/null | "
                         f"grep -q {q('^pool=' + p.name + ' ')}" for p in pools)
    return (f"i=0; until {checks}; do i=$((i + 1)); [ $i -lt {ticks} ] || "
            f"{{ echo 'nginx does not answer the pools members' >&2; exit 1; }}; "
            "sleep 0.1; done")
