"""Pure builders of remote command strings. All quoting happens here, with shlex.

Nothing in this module talks to a host: every function returns a string that
the executor runs, so each can be unit-tested for its exact text.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath

from .layout import ApacheLayout, Layout

PathLike = str | PurePosixPath
SECTION = "@@fpm-fleet-section@@"
STAGED = ".fpm-fleet-new"  # a config uploaded beside its target, installed by install_checked
FPM_MASTER_TITLE = "php-fpm: master process ({conf})"


def q(value: PathLike | int) -> str:
    """Quote one word for a POSIX shell."""
    return shlex.quote(str(value))


def join(argv: Iterable[PathLike | int]) -> str:
    return " ".join(q(a) for a in argv)


def as_root(command: str, sudo: bool) -> str:
    """Run `command` as root: as is for a root login, else through passwordless sudo."""
    if not sudo:
        return command
    return f"sudo -n -- sh -c {q(command)}"


def sections(parts: Sequence[tuple[str, str]]) -> str:
    """Run several commands in one round trip; their outputs are split by `split_sections`."""
    return "; ".join(f"printf '\\n%s %s\\n' {q(SECTION)} {q(name)}; {cmd}" for name, cmd in parts)


def split_sections(stdout: str) -> dict[str, str]:
    out: dict[str, str] = {}
    name = None
    lines: list[str] = []
    for line in stdout.splitlines():
        if line.startswith(SECTION + " "):
            if name is not None:
                out[name] = "\n".join(lines).strip("\n")
            name, lines = line[len(SECTION) + 1:], []
        elif name is not None:
            lines.append(line)
    if name is not None:
        out[name] = "\n".join(lines).strip("\n")
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
    return ("; ".join(steps) + f"; if out=$({test} 2>&1); then {cleanup}; else "
            + "; ".join(restore) + "; printf '%s\\n' \"$out\" >&2; exit 1; fi")


# --- Apache ----------------------------------------------------------------------------------

def apache_test(apache: ApacheLayout) -> str:
    if apache.is_instance:
        return f"apache2 -f {q(apache.main_config)} -t"
    return "apache2ctl configtest"


def apache_ctl(apache: ApacheLayout, action: str) -> str:
    """start / graceful / stop, with every descriptor redirected so the SSH channel closes."""
    if action not in ("start", "graceful", "stop"):
        raise ValueError(action)
    if apache.is_instance:
        err = apache.log_dir / "ctl.log"
        base = f"apache2 -f {q(apache.main_config)} -k {action}"
    else:
        err = PurePosixPath("/tmp/fpm-fleet-apache2ctl.log")
        base = f"apache2ctl {action}"
    return (f"{base} </dev/null >/dev/null 2>{q(err)} || "
            f"{{ cat -- {q(err)} >&2; exit 1; }}")


def apache_running(apache: ApacheLayout) -> str:
    """Exit 0 when the Apache this host uses is running."""
    return (f"pid=$(cat -- {q(apache.pid_file)} 2>/dev/null) && [ -n \"$pid\" ] "
            f"&& kill -0 \"$pid\" 2>/dev/null")


APACHE_MODULES = ("proxy", "proxy_fcgi", "proxy_balancer", "lbmethod_bybusyness",
                  "lbmethod_byrequests", "slotmem_shm", "authz_host", "rewrite")


def apache_enable_site() -> str:
    """System Apache only: the modules and the site, enabled the Debian way."""
    return f"a2enmod -q {join(APACHE_MODULES)} >/dev/null && a2ensite -q fpm-fleet >/dev/null"


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


def apache_modules_loaded(apache: ApacheLayout) -> str:
    if apache.is_instance:
        return f"apache2 -f {q(apache.main_config)} -M 2>/dev/null"
    return "apache2ctl -M 2>/dev/null"


# --- balancer-manager ------------------------------------------------------------------------

def balancer_xml(url: str) -> str:
    """Read balancer-manager as XML (it answers with HTML without a same-host Referer)."""
    return f"curl -sS --fail --max-time 5 -H {q('Referer: ' + url)} {q(url + '?xml=1')}"


def balancer_set(url: str, balancer: str, worker: str, nonce: str,
                 flags: Mapping[str, int]) -> str:
    """POST a member's status flags, then read the page back in the same round trip."""
    form = [f"--data-urlencode {q(f'{k}={v}')}" for k, v in
            (("b", balancer), ("w", worker), ("nonce", nonce))]
    form += [f"--data {q(f'w_status_{flag}={value}')}" for flag, value in flags.items()]
    post = (f"curl -sS --fail --max-time 5 -o /dev/null -H {q('Referer: ' + url)} "
            f"{' '.join(form)} {q(url)}")
    return f"{post} && {balancer_xml(url)}"


# --- PHP-FPM ---------------------------------------------------------------------------------

def fcgi_request(sock: PathLike, script_name: str, script_filename: PathLike,
                 query: str = "", timeout: float = 5) -> str:
    """One FastCGI request straight to a replica's socket (Debian's libfcgi-bin)."""
    env = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": script_name,
           "SCRIPT_FILENAME": str(script_filename), "QUERY_STRING": query,
           "REQUEST_URI": script_name + (f"?{query}" if query else ""),
           "SERVER_NAME": "fpm-fleet", "REMOTE_ADDR": "127.0.0.1"}
    assigns = " ".join(q(f"{k}={v}") for k, v in env.items())
    return f"timeout {timeout:g} env -i {assigns} cgi-fcgi -bind -connect {q(sock)}"


def mountinfo_escape(path: PathLike) -> str:
    """How /proc/PID/mountinfo writes a path (space, tab, newline, backslash as octal)."""
    table = {" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"}
    return "".join(table.get(c, c) for c in str(path))


PROBE_FUNCTION = r"""probe() {
  pid=$(cat -- "$2" 2>/dev/null | head -n 1)
  case $pid in ''|*[!0-9]*) printf '%s\t-\t-\t-\t-\t-\n' "$1"; return;; esac
  state=$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$pid/status" 2>/dev/null)
  [ -n "$state" ] || state=-
  etimes=$(ps -o etimes= -p "$pid" 2>/dev/null | tr -d ' ')
  title=$(tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | head -n 1)
  pinned=$(mp="$3" awk '$5 == ENVIRON["mp"] {print $4}' "/proc/$pid/mountinfo" 2>/dev/null \
    | tail -n 1)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$pid" "$state" "${etimes:--}" "${title:--}" \
    "${pinned:--}"
}"""


def probe_replicas(layout: Layout, numbers: Iterable[int]) -> str:
    """One TSV line per replica: n, pid, state, elapsed s, process title, pinned mount root."""
    calls = [f"probe {n} {q(layout.pid(n))} {q(mountinfo_escape(layout.current))}"
             for n in numbers]
    return PROBE_FUNCTION + "; " + "; ".join(calls)


def open_connections(sock: PathLike) -> str:
    """How many connections to a listening unix socket are open right now (accepted or
    queued), from the kernel's table: requests in flight, even to workers whose master died."""
    return (f"p={q(sock)} awk '$6 == \"03\" && $8 == ENVIRON[\"p\"] {{n++}} "
            f"END {{print n + 0}}' /proc/net/unix")


def read_current_release(layout: Layout) -> str:
    return f"readlink -- {q(layout.current_release)}"


def fpm_start(layout: Layout, n: int, php_fpm: str, release: str) -> str:
    """Start replica n in a fresh private mount namespace with `release` bound on current/.

    php-fpm --daemonize returns once the master listens; the namespace lives on in it.
    """
    start_log = layout.log / f"{layout.pool}-{n}.start.log"
    release_dir = layout.release(release)
    pin = 'mount --bind -- "$1" "$2" && exec "$3" --fpm-config "$4" --daemonize'
    return (f"[ -d {q(release_dir)} ] || {{ echo {q(f'release {release} is missing')} >&2; "
            f"exit 3; }}; rm -f -- {q(layout.sock(n))} {q(layout.status_sock(n))}; "
            f"unshare --mount --propagation private -- sh -c {q(pin)} fpm-fleet-pin "
            f"{q(release_dir)} {q(layout.current)} {q(php_fpm)} {q(layout.fpm_conf(n))} "
            f"</dev/null >/dev/null 2>{q(start_log)} || "
            f"{{ tail -n 5 -- {q(start_log)} >&2; exit 1; }}")


FPM_STOP_SCRIPT = r"""pidf=$1 want=$2 mp=$3 worker=$4 ticks=$5
gone() { [ ! -e "$pidf" ] || [ ! -e "/proc/$1" ] ||
  grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
wait_gone() { i=0; until gone "$1"; do i=$((i+1)); [ "$i" -ge "$2" ] && return 1;
  sleep 0.02; done; }
strays() { for p in $(pgrep -f "^$worker[[:space:]]*\$"); do
  mp="$mp" awk '$5 == ENVIRON["mp"] {f=1} END {exit !f}' "/proc/$p/mountinfo" 2>/dev/null \
    && echo "$p"; done; }
state=not-running
pid=$(head -n 1 "$pidf" 2>/dev/null)
case $pid in ''|*[!0-9]*) pid= ;; esac
if [ -n "$pid" ] && ! gone "$pid"; then
  title=$(tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | head -n 1)
  if [ "$title" != "$want" ]; then
    echo "pid $pid is not this replica's php-fpm master ($title)" >&2; exit 3
  fi
  kill -QUIT "$pid"; state=stopped
  if ! wait_gone "$pid" "$ticks"; then
    echo escalated; kill -TERM "$pid" 2>/dev/null
    wait_gone "$pid" 250 || kill -KILL "$pid" 2>/dev/null
  fi
fi
rm -f -- "$pidf"
s=$(strays)
if [ -n "$s" ]; then
  echo "strays $(echo $s | wc -w)"; kill -QUIT $s 2>/dev/null; i=0
  while [ -n "$(strays)" ] && [ "$i" -lt "$ticks" ]; do i=$((i+1)); sleep 0.02; done
  s=$(strays); [ -z "$s" ] || kill -KILL $s 2>/dev/null
fi
echo $state"""


def fpm_stop(layout: Layout, n: int, timeout: float) -> str:
    """Graceful stop (SIGQUIT) of replica n's master, verified by its title; escalate late.

    Prints `not-running` or `stopped` last, after `escalated` if SIGQUIT was not enough and
    `strays N` if workers outlived their master (a master killed with SIGKILL leaves its
    workers running: they finish their request, then get SIGQUIT). A zombie or a vanished
    pid file counts as stopped (PID 1 may reap late).
    """
    ticks = max(1, int(timeout / 0.02))
    args: list[PathLike | int] = [layout.pid(n), FPM_MASTER_TITLE.format(conf=layout.fpm_conf(n)),
            mountinfo_escape(layout.current), f"php-fpm: pool {layout.pool}-{n}", ticks]
    return f"sh -c {q(FPM_STOP_SCRIPT)} fpm-fleet-stop {join(args)}"


def probe_tools() -> str:
    """Preflight: which of the commands fpm-fleet relies on are present on the host."""
    tools = ("unshare", "cgi-fcgi", "curl", "mount", "awk", "ps", "tar", "sha256sum",
             "flock", "apache2")
    return "; ".join(f"printf '%s\\t%s\\n' {t} \"$(command -v {t} || echo -)\"" for t in tools)
