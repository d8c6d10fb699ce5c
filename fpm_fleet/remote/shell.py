"""What every command builder shares (pure): quoting with shlex, the bound on the host,
several probes in one round trip, the exact argv of the few root commands, staged file
installs, and the scripts of templates/sh (checked by shellcheck), sent ahead of the
commands that call their functions.

The builders themselves live beside the code that reads their answers: host/fpm.py,
web/balancer.py, web/apache_site.py, releases/commands.py, host/lock.py.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import PurePosixPath

from fpm_fleet.core.resources import SHELL_SCRIPTS

PathLike = str | PurePosixPath
SECTION = "@@fpm-fleet-section@@"
STAGED = ".fpm-fleet-new"  # a config uploaded beside its target, installed by install_checked


def q(value: PathLike | int) -> str:
    """Quote one word for a POSIX shell."""
    return shlex.quote(str(value))


def join(argv: Iterable[PathLike | int]) -> str:
    return " ".join(q(a) for a in argv)


def as_root(command: str, sudo: bool) -> str:
    """Run a whole shell command as root: as is for a root login, else through passwordless
    sudo. Only `fab setup` does this (it needs full root); every other task runs as the
    login user and reaches root only through `privileged`."""
    if not sudo:
        return command
    return f"sudo -n -- sh -c {q(command)}"


# --- the few commands a deploy user runs as root ---------------------------------------------
# Word for word what etc/sudoers.d/fpm-fleet allows (rendered by render.sudoers from these
# same tuples): fixed arguments only, one line per replica service, no wildcard (a `*` in
# sudoers also matches spaces, so `fpm-fleet-*@*.service` would allow extra units and options).

# nginx's only root command: the helper that rewrites a pool's upstream from the states it
# reads on stdin, tests and reloads nginx (templates/sh/nginx-members.sh; `fab setup`
# installs it). One line per pool: its argument is the pool's name.
NGINX_MEMBERS = "/usr/local/lib/fpm-fleet/nginx-members"
SUDO_PATHS = {"systemctl": "/usr/bin/systemctl", "journalctl": "/usr/bin/journalctl",
              "apache2ctl": "/usr/sbin/apache2ctl", NGINX_MEMBERS: NGINX_MEMBERS}
REPLICA_VERBS = ("start", "stop", "enable", "disable", "reset-failed", "journal")
APACHE_CONFIGTEST = ("apache2ctl", "configtest")
APACHE_GRACEFUL = ("systemctl", "reload", "apache2.service")


def replica_command(verb: str, unit: str) -> tuple[str, ...]:
    """The exact argv of one privileged action on a replica's service."""
    commands = {
        "start": ("systemctl", "start", unit),
        "stop": ("systemctl", "stop", unit),
        # --no-reload: the link under multi-user.target.wants is all a boot reads; a reload
        # re-runs every generator and re-reads every unit (0.14 s of the host's CPU against
        # 0.01 s, measured), and a deploy enables and disables four services per pool.
        "enable": ("systemctl", "enable", "--no-reload", "--quiet", unit),
        "disable": ("systemctl", "disable", "--no-reload", "--quiet", unit),
        "reset-failed": ("systemctl", "reset-failed", unit),
        "journal": ("journalctl", "--no-pager", "-o", "cat", "-n", "5", "-u", unit),
    }
    return commands[verb]


def nginx_members(pool: str) -> tuple[str, ...]:
    """The exact argv that changes a pool's nginx upstream (the states go on stdin)."""
    return (NGINX_MEMBERS, pool)


NGINX_CHECK = (NGINX_MEMBERS, "--check")  # `nginx -t` as root, before a rollout changes anything


def privileged(argv: Sequence[str], sudo: bool) -> str:
    """One root command: through `sudo -n` for a non-root login (sudo finds the binary on
    its secure_path, the path the sudoers line names), as is for a root login."""
    return ("sudo -n -- " if sudo else "") + join(argv)


def install_sudoers(path: PathLike) -> str:
    """Install the staged `<path>.fpm-fleet-new` only if `visudo -cf` accepts it (a broken
    file in sudoers.d breaks sudo for everyone). The staged name holds a dot: sudo's
    includedir skips it meanwhile."""
    new = q(f"{path}{STAGED}")
    return (f"if visudo -cf {new} >/dev/null; then chown root:root -- {new} && "
            f"chmod 0440 -- {new} && mv -f -- {new} {q(path)}; else rm -f -- {new}; exit 1; fi")


def sudo_denied(argvs: Iterable[Sequence[str]]) -> str:
    """Print each of the commands that `sudo -n` would refuse to this user (sudo -l asks the
    policy without running anything)."""
    return "; ".join(f"sudo -n -l -- {join(a)} >/dev/null 2>&1 || printf '%s\\n' {q(join(a))}"
                     for a in argvs) + "; true"


def not_writable(paths: Iterable[PathLike]) -> str:
    """Print each path the login user cannot write to."""
    return (f"for d in {join(paths)}; do [ -w \"$d\" ] || printf '%s\\n' \"$d\"; done")


KILL_AFTER = 5  # seconds between `timeout`'s SIGTERM and its SIGKILL


def bounded(command: str, seconds: float) -> str:
    """Run `command` for at most `seconds` on the host itself: `timeout` signals the whole
    process group (a hook's children too), so nothing outlives the run that started it (or
    the lock it held) when the connection is lost or the client gives up. Exit 124: timed out.
    """
    return f"timeout -k {KILL_AFTER} {seconds:g} sh -c {q(command)}"


def then(first: str, second: str) -> str:
    """`second` only once `first` succeeded, in one round trip (each in braces: a `;` or
    `exit` inside either stays inside it)."""
    return f"{{ {first}\n}} && {{ {second}\n}}"


def sections(parts: Sequence[tuple[str, str]], at_once_from: int | None = None) -> str:
    """Run several commands in one round trip; `split_sections` separates their outputs and
    exit statuses (each command runs in its own braces, so an `exit` in one ends them all:
    the parts are probes, which do not exit).

    From part `at_once_from` on, the parts run at the same time, once those before are done:
    each in the background, its output kept in a file of a temporary directory, all printed
    in order once the last is done. Worth it for parts that wait (a request to the web
    server, a FastCGI answer): the round trip lasts as long as the longest, at the price of
    three processes (mktemp, cat, rm)."""
    def one(name: str, cmd: str) -> str:
        return (f"printf '\\n%s %s\\n' {q(SECTION)} {q(name)}; {{ {cmd}\n}}; "
                f"printf '\\n%s %s\\n' {q(SECTION_EXIT)} \"$?\"")

    split = len(parts) if at_once_from is None else max(0, at_once_from)
    if len(parts) - split < 2:
        return "; ".join(one(name, cmd) for name, cmd in parts)
    first = [one(name, cmd) + "; " for name, cmd in parts[:split]]
    started = [f"{{ {one(name, cmd)}; }} >\"$_fpmf_at_once/{i}\" & "
               for i, (name, cmd) in enumerate(parts[split:])]
    files = " ".join(f'"$_fpmf_at_once/{i}"' for i in range(len(started)))
    return ("".join(first) + "_fpmf_at_once=$(mktemp -d) || exit 1; " + "".join(started)
            + f"wait; cat -- {files}; rm -rf -- \"$_fpmf_at_once\"")


SECTION_EXIT = SECTION + "exit"


def split_sections(stdout: str) -> dict[str, tuple[str, int]]:
    """`sections` output -> {name: (output, exit status)}; -1 when the status is missing."""
    out: dict[str, tuple[str, int]] = {}
    name: str | None = None
    lines: list[str] = []
    for line in stdout.splitlines():
        head, _, rest = line.partition(" ")
        if head not in (SECTION, SECTION_EXIT):
            lines.append(line)
            continue
        if name is not None:
            code = int(rest) if head == SECTION_EXIT and rest.isdigit() else -1
            out[name] = ("\n".join(lines).strip("\n"), code)
        name, lines = (rest if head == SECTION else None), []
    if name is not None:
        out[name] = ("\n".join(lines).strip("\n"), -1)
    return out


# --- files and directories -------------------------------------------------------------------

def checksums(paths: Iterable[PathLike]) -> str:
    """sha256 of each existing file; missing files are simply absent from the output."""
    return f"sha256sum -- {join(paths)} 2>/dev/null; true"


def write_stdin(path: PathLike, mode: str = "0644") -> str:
    """Write the channel's stdin to `path` atomically (temp file + rename)."""
    tmp = f"{path}.fpm-fleet-tmp"
    return f"cat > {q(tmp)} && chmod {mode} -- {q(tmp)} && mv -f -- {q(tmp)} {q(path)}"


def install_checked(files: Sequence[PathLike], test: str) -> str:
    """Move staged `<file>.fpm-fleet-new` into place, run `test`; on failure put the old back.

    A config that fails its test is never left installed.
    """
    steps = []
    for f in files:
        new, old = q(f"{f}{STAGED}"), q(f"{f}.fpm-fleet-old")
        steps.append(f"if [ -e {q(f)} ]; then cp -p -- {q(f)} {old}; else rm -f -- {old}; fi; "
                     f"mv -f -- {new} {q(f)}")
    restore = []
    for f in files:
        old = q(f"{f}.fpm-fleet-old")
        restore.append(f"if [ -e {old} ]; then mv -f -- {old} {q(f)}; else rm -f -- {q(f)}; fi")
    cleanup = "; ".join(f"rm -f -- {q(f'{f}.fpm-fleet-old')}" for f in files)
    return ("; ".join(steps) + f"; if out=$({{ {test}; }} 2>&1); then {cleanup}; else "
            + "; ".join(restore) + "; printf '%s\\n' \"$out\" >&2; exit 1; fi")


# --- systemd ---------------------------------------------------------------------------------

def has_systemd() -> str:
    """Exit 0 on a host booted with systemd (sd_booted(3)'s own test)."""
    return "test -d /run/systemd/system"


# --- scripts of templates/sh -----------------------------------------------------------------

REPLICA_LIB = "replica-lib.sh"  # workers_outside, count_workers_outside, open_connections


@cache
def script(name: str) -> str:
    """A script of templates/sh as command text, sent ahead of the commands that call its
    functions. Its comment lines are left out: they would only lengthen every command (the
    scripts hold no here-document, whose lines could start with `#`)."""
    lines = (SHELL_SCRIPTS / name).read_text().splitlines()
    return "\n".join(line for line in lines if line.strip() and not line.lstrip().startswith("#"))


def with_replica_lib(command: str) -> str:
    """`command`, able to call the functions of templates/sh/replica-lib.sh."""
    return f"{script(REPLICA_LIB)}\n{command}"


# --- systemd units ---------------------------------------------------------------------------

def daemon_reload() -> str:
    return "systemctl daemon-reload"


def enable_units(units: Iterable[str]) -> str:
    """Enable units that are not yet; print each one enabled (so a rerun prints nothing)."""
    return (f"for u in {join(units)}; do systemctl is-enabled --quiet \"$u\" || "
            f"{{ systemctl enable --quiet \"$u\" && printf '%s\\n' \"$u\"; }}; done")


def probe_tools(web_binary: str = "apache2") -> str:
    """Preflight: which of the commands fpm-fleet relies on are present on the host (with
    the web server's binary: apache2 or nginx)."""
    tools = ("systemctl", "cgi-fcgi", "curl", "awk", "ps", "tar", "sha256sum", "flock",
             web_binary)
    # sbin is not on a non-root user's PATH on Debian (apache2 lives in /usr/sbin)
    return "PATH=\"$PATH:/usr/local/sbin:/usr/sbin:/sbin\"; " + "; ".join(
        f"printf '%s\\t%s\\n' {t} \"$(command -v {t} || echo -)\"" for t in tools)
