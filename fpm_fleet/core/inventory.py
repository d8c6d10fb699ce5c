"""hosts.toml -> frozen, typed objects, validated once.

Every mistake becomes one ConfigError naming the file, the key and the problem,
raised before any host is touched.
"""

from __future__ import annotations

import difflib
import math
import os
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from fpm_fleet.core import stages
from fpm_fleet.core.errors import ConfigError

HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
POOL_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
URL_PATH = re.compile(r"^/[A-Za-z0-9._/-]*$")
ACCOUNT = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# A path inside the release, written into Apache directives and rewrite targets: plain
# segments only (no '.' or '..', no dot-directory, which the vhost refuses anyway).
RELEASE_PATH = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")
APACHE_MODES = ("system",)
APACHE, NGINX = "apache", "nginx"
WEB_SERVERS = (APACHE, NGINX)

T = TypeVar("T")


@dataclass(frozen=True)
class WebServer:
    """What both web servers share: where the pools' public virtual hosts listen, and the
    account its workers run as (the replica sockets are made for it)."""

    listen: str = "*:80"
    user: str = "www-data"
    group: str = "www-data"

    @property
    def port(self) -> int:
        """The TCP port of the pools' public virtual hosts (`listen` is ADDRESS:PORT)."""
        port = self.listen.rsplit(":", 1)[-1]
        return int(port) if port.isdigit() else 80

    @property
    def local_address(self) -> str:
        """Where a client on the host itself reaches the public vhosts (for `fab check`)."""
        address, colon, _ = self.listen.rpartition(":")
        if not colon or address in ("*", "0.0.0.0"):
            return "127.0.0.1"
        return "[::1]" if address == "[::]" else address


@dataclass(frozen=True)
class Apache(WebServer):
    """How Debian's Apache serves the pools on a host (`mode` has one value left: `system`)."""

    mode: str = "system"
    manager_port: int = 8081


@dataclass(frozen=True)
class Nginx(WebServer):
    """How Debian's nginx serves the pools on a host (`web = "nginx"`)."""


def replica_name(pool: str, n: int) -> str:
    """The one spelling of replica n of a pool: `www-2`."""
    return f"{pool}-{n}"


SURGE, ROLLING = "surge", "rolling"


@dataclass(frozen=True)
class Pool:
    """One PHP application, served by `replicas` PHP-FPM masters behind one balancer."""

    name: str
    replicas: int
    root: str
    php_fpm: str
    user: str
    group: str
    ping_path: str
    status_path: str
    health_path: str
    balancer: str
    manager_url: str | None
    server_name: str
    max_children: int
    retry: int
    stop_timeout: int
    source: str
    shared: tuple[str, ...]
    before_activate: tuple[str, ...]
    after_activate: tuple[str, ...] = ()
    document_root: str = ""
    front_controller: str | None = None
    strategy: str = "surge"
    keep_previous: bool = False
    # Deploys from git (`fab deploy --ref`): the repository, a path or a URL (fpm_fleet/source)
    repository: str | None = None
    # Commands run on the control machine in a copy of the source before the upload
    build: tuple[str, ...] = ()

    def replica_name(self, n: int) -> str:
        """Replica n as the operator names it (`www-2`): its sockets, config, FPM pool and
        balancer member are all named after it."""
        return replica_name(self.name, n)

    def member(self, n: int) -> str:
        """The balancer member's identity (`fcgi://<pool>-<n>`), unique per Apache."""
        return f"fcgi://{self.replica_name(n)}"

    @property
    def slots(self) -> int:
        """Replica services and balancer members on each host: `replicas` rolling, twice
        that with the surge strategy (a standby set the next release starts in)."""
        return self.replicas * (2 if self.strategy == SURGE else 1)

    @property
    def replica_numbers(self) -> range:
        """Every slot's number: a host has a service and a member for each."""
        return range(1, self.slots + 1)

    @property
    def sets(self) -> tuple[range, ...]:
        """The replica sets a surge rollout flips between (one set when rolling)."""
        r = self.replicas
        return tuple(range(1 + i * r, 1 + (i + 1) * r) for i in range(self.slots // r))


@dataclass(frozen=True)
class Host:
    """One machine of the fleet with its connection settings and per-host overrides."""

    name: str
    address: str
    port: int
    user: str
    sudo: bool
    root: str
    known_hosts: str | None
    identity_file: str | None
    connect_timeout: float
    command_timeout: float
    trust_new_host_keys: bool
    keep_releases: int
    apache: Apache
    nginx: Nginx = Nginx()
    web: str = APACHE  # which web server balances the replicas: APACHE or NGINX
    # Who `fab setup` logs in as: it needs full root (root, or sudo for everything), and
    # provisions the host for `user`, which needs only fpm-fleet's sudoers lines afterwards.
    setup_user: str = "root"

    @property
    def web_server(self) -> WebServer:
        """The settings of the web server this host runs (its `web`)."""
        return self.nginx if self.web == NGINX else self.apache

    def pool_dir(self, pool: Pool) -> PurePosixPath:
        """`<root>/<pool>` on this host (an absolute pool root wins)."""
        return PurePosixPath(self.root) / pool.root

    def manager_url(self, pool: Pool) -> str:
        if pool.manager_url:
            return pool.manager_url
        return f"http://127.0.0.1:{self.apache.manager_port}/balancer-manager"


@dataclass(frozen=True)
class Notify:
    """`[notify]`: webhooks told of every deploy and rollback (fpm_fleet/notify.py)."""

    webhooks: tuple[str, ...] = ()
    format: str = "json"  # or "slack": a Slack-compatible {"text": ...} payload
    timeout: float = 5.0  # seconds per attempt, and the most a run waits for them at its end
    retries: int = 2


@dataclass(frozen=True)
class Fleet:
    """The whole inventory: hosts in order, pools by name."""

    path: str
    hosts: tuple[Host, ...]
    pools: tuple[Pool, ...]
    log_dir: str
    notify: Notify = Notify()

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def pool(self, name: str) -> Pool:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)


class _Reader:
    """Typed access to one TOML table that reports errors as `file: key: problem`."""

    def __init__(self, path: str, prefix: str, table: Mapping[str, Any]) -> None:
        self.file = path
        self.prefix = prefix
        self.table = table
        self.used: set[str] = set()

    def fail(self, key: str, problem: str) -> ConfigError:
        where = f"{self.prefix}.{key}" if self.prefix else key
        return ConfigError(f"{self.file}: {where}: {problem}")

    def get(self, key: str, kind: type[T], default: T | None = None, required: bool = False) -> T:
        self.used.add(key)
        if key not in self.table:
            if required or default is None:
                raise self._misspelt(key) or self.fail(key, "missing required key")
            return default
        value = self.table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"must be {_kind_name(kind)}, got {type(value).__name__}")
        if isinstance(value, float) and not _finite(value):
            raise self.fail(key, f"must be a finite number, got {value}")
        return value

    def optional(self, key: str, kind: type[T]) -> T | None:
        if key not in self.table:
            self.used.add(key)
            return None
        return self.get(key, kind)

    def strings(self, key: str) -> tuple[str, ...]:
        values = self.get(key, list, [])
        if not all(isinstance(v, str) for v in values):
            raise self.fail(key, "must be a list of strings")
        return tuple(values)

    def check(self, key: str, ok: Callable[[Any], bool], problem: str) -> None:
        if key in self.table and not ok(self.table[key]):
            raise self.fail(key, problem)

    def reject_unknown(self) -> None:
        """Called after every valid key was read: what is left is unknown."""
        valid = sorted(self.used)
        for key in self.table:
            if key not in self.used:
                close = closest(key, valid)
                hint = f"did you mean {close!r}?" if close else f"valid keys: {', '.join(valid)}"
                raise self.fail(key, f"unknown key; {hint}")

    def _misspelt(self, required: str) -> ConfigError | None:
        """A missing required key next to a close unread one (`replica` for `replicas`) is a
        typo of that key: say so rather than "missing" (reject_unknown runs too late)."""
        unread = [k for k in self.table if k not in self.used]
        close = closest(required, unread)
        return self.fail(close, f"unknown key; did you mean {required!r}?") if close else None

    def path(self, key: str) -> str | None:
        """An optional file path, resolved against the inventory's directory."""
        value = self.optional(key, str)
        return beside(self.file, value) if value else None


def closest(word: str, candidates: list[str]) -> str | None:
    """The candidate `word` is most likely a typo of; swapped letters (`prot`) win a tie
    with a different word that is as similar (`root`)."""
    close = difflib.get_close_matches(word, candidates, n=3)
    swapped = [c for c in close if sorted(c) == sorted(word)]
    best = swapped or close
    return best[0] if best else None


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "a list", dict: "a table"}.get(kind, kind.__name__)


# Roots and binaries end up in Apache directives (quoted strings, `<Directory>` section tags,
# whose paths are globs, `unix:SOCKET|fcgi://` members, mod_rewrite rules where `$1` and `%1`
# are back-references), FPM ini values and systemd units (`BindReadOnlyPaths=SRC:DST`, `%`
# specifiers). Only characters none of them reads specially are allowed.
CONFIG_PATH = re.compile(r"[A-Za-z0-9._/@+,=~-]+")
CONFIG_PATH_RULE = ("no whitespace or quotes, only letters, digits and . _ - / + @ , = ~ "
                    "(it is written into Apache, PHP-FPM and systemd configs)")


def _config_path(value: str) -> bool:
    return bool(CONFIG_PATH.fullmatch(value))


def _absolute_path(value: str) -> bool:
    """Absolute, no '..', nothing Apache, FPM, systemd or mod_rewrite would read differently."""
    path = PurePosixPath(value)
    return path.is_absolute() and ".." not in path.parts and _config_path(value)


def normal(value: str) -> str:
    """`a//b/./c/` -> `a/b/c` (after '..' was refused: no symlink question arises)."""
    if not value:
        return value
    path = posixpath.normpath(value)
    return "/" + path.lstrip("/") if path.startswith("//") else path  # POSIX keeps a leading //


def beside(inventory: str, value: str) -> str:
    """A path written in the inventory: `~` expanded, and a relative one taken from the
    inventory's own directory, so every task finds the same files from any directory."""
    path = Path(value).expanduser()
    return os.path.abspath(path if path.is_absolute() else Path(inventory).parent / path)


def _relative_or_absolute(value: str) -> bool:
    return (bool(value) and ".." not in PurePosixPath(value).parts and _config_path(value)
            and normal(value) not in (".", "/"))


def _finite(value: float) -> bool:
    return math.isfinite(value)


# Beyond these a value is a typo (or `inf`), never a setting: a deadline of a day, a pool
# of thousands of PHP workers per replica.
MAX_CONNECT_TIMEOUT = 300.0
MAX_COMMAND_TIMEOUT = 86400.0
MAX_KEEP_RELEASES = 100
MAX_CHILDREN = 1000

HOST_KEYS_DEFAULTS: dict[str, Any] = {
    "port": 22,
    "user": "root",
    "root": "/srv/fpm-fleet",
    "connect_timeout": 10.0,
    "command_timeout": 300.0,
    "trust_new_host_keys": False,
    "keep_releases": 5,
    "web": APACHE,
}


def load(path: str | Path) -> Fleet:
    """Read and validate an inventory file (with the files it extends: core/stages.py)."""
    path = str(path)
    data = stages.read(path, anchor_paths)
    fleet = parse(data, path)
    _check_files(data, path)
    return fleet


FILE_KEYS = ("identity_file", "known_hosts")


def anchor_paths(data: dict[str, Any], path: str) -> dict[str, Any]:
    """The relative paths one inventory file writes, taken from its own directory: a file
    extended by a stage in another directory means what it says. Values of a wrong type
    are left for the validation to name."""
    def fix(table: Any, keys: tuple[str, ...]) -> Any:
        if not isinstance(table, dict):
            return table
        return {k: beside(path, v) if k in keys and isinstance(v, str) and v
                and not (k == "repository" and is_url(v)) else v for k, v in table.items()}

    out: dict[str, Any] = fix(data, ("log_dir",))
    out["defaults"] = fix(out.get("defaults", {}), FILE_KEYS)
    if isinstance(out.get("hosts"), list):
        out["hosts"] = [fix(h, FILE_KEYS) for h in out["hosts"]]
    if isinstance(out.get("pools"), dict):
        out["pools"] = {n: fix(t, ("source", "repository")) for n, t in out["pools"].items()}
    return out


def is_url(repository: str) -> bool:
    """A repository git reaches over a transport (`https://`, `ssh://`, `git@host:path`),
    not a local path: git reads `host:path` as scp-like when the colon comes before any
    slash."""
    return "://" in repository or bool(re.match(r"[^/]+:", repository))


def _check_files(data: Mapping[str, Any], path: str) -> None:
    """Key files named in the inventory must exist: found now, not at connect time on the
    first host (parse already checked the types, so the tables can be walked as they are)."""
    tables = [("defaults", data.get("defaults", {}))]
    tables += [(f"hosts.{h['name']}", h) for h in data["hosts"]]
    for where, table in tables:
        for key in FILE_KEYS:
            if key in table and not Path(beside(path, table[key])).is_file():
                raise ConfigError(f"{path}: {where}.{key}: file {beside(path, table[key])} "
                                  "does not exist")


def parse(data: Mapping[str, Any], path: str = "hosts.toml") -> Fleet:
    """Validate an already-decoded inventory (kept separate so tests need no files)."""
    top = _Reader(path, "", data)
    defaults = top.get("defaults", dict, {})
    host_tables = top.get("hosts", list, required=True)
    pool_tables = top.get("pools", dict, required=True)
    log_dir = top.get("log_dir", str, "logs")
    notify = read_notify(_Reader(path, "notify", top.get("notify", dict, {})))
    top.reject_unknown()
    if not host_tables:
        raise top.fail("hosts", "at least one host is required")
    if not pool_tables:
        raise top.fail("pools", "at least one pool is required")
    defaults_reader = _Reader(path, "defaults", defaults)
    base_apache = _apache(_Reader(path, "defaults.apache",
                                  defaults_reader.get("apache", dict, {})), Apache())
    base_nginx = _nginx(_Reader(path, "defaults.nginx",
                                defaults_reader.get("nginx", dict, {})), Nginx())
    base = _host_settings(defaults_reader, HOST_KEYS_DEFAULTS)
    defaults_reader.reject_unknown()
    hosts = tuple(_host(path, i, table, base, (base_apache, base_nginx))
                  for i, table in enumerate(host_tables))
    _reject_duplicates(path, "hosts", [h.name for h in hosts], "name")
    _reject_duplicates(path, "hosts", [f"{h.address}:{h.port}" for h in hosts], "address")
    pools = tuple(_pool(path, name, table) for name, table in pool_tables.items())
    _reject_duplicates(path, "pools", [p.balancer for p in pools], "balancer")
    _reject_duplicates(path, "pools", [p.root for p in pools], "root")
    for host in hosts:
        _reject_overlapping_pools(path, host, pools)
    return Fleet(path=path, hosts=hosts, pools=pools, log_dir=beside(path, log_dir),
                 notify=notify)


def _inside(inner: PurePosixPath, outer: PurePosixPath) -> bool:
    return inner == outer or outer in inner.parents


def _reject_overlapping_pools(path: str, host: Host, pools: tuple[Pool, ...]) -> None:
    """Two pools in one directory (`www` and `/srv/fpm-fleet/www`), or one inside the other,
    would share releases, locks and sockets, and a cleanup of one would delete the other."""
    dirs = [(p, host.pool_dir(p)) for p in pools]
    for i, (a, dir_a) in enumerate(dirs):
        for b, dir_b in dirs[i + 1:]:
            if _inside(dir_a, dir_b) or _inside(dir_b, dir_a):
                raise ConfigError(f"{path}: pools: {a.name} and {b.name} resolve to overlapping "
                                  f"directories on host {host.name} ({dir_a}, {dir_b}): give "
                                  "each pool a directory of its own")


def _reject_duplicates(path: str, section: str, values: list[str], key: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ConfigError(f"{path}: {section}: duplicate {key} {value!r}")
        seen.add(value)


def _host_settings(reader: _Reader, base: Mapping[str, Any]) -> dict[str, Any]:
    """The connection/host keys shared by [defaults] and each [[hosts]] entry."""
    out = dict(base)
    out["port"] = reader.get("port", int, base["port"])
    out["user"] = reader.get("user", str, base["user"])
    out["setup_user"] = reader.optional("setup_user", str) or base.get("setup_user")
    out["sudo"] = reader.optional("sudo", bool)
    if out["sudo"] is None:
        out["sudo"] = base.get("sudo")
    out["root"] = reader.get("root", str, base["root"])
    for key in FILE_KEYS:
        out[key] = reader.path(key) or base.get(key)
    out["connect_timeout"] = reader.get("connect_timeout", float, base["connect_timeout"])
    out["command_timeout"] = reader.get("command_timeout", float, base["command_timeout"])
    out["trust_new_host_keys"] = reader.get("trust_new_host_keys", bool,
                                            base["trust_new_host_keys"])
    out["keep_releases"] = reader.get("keep_releases", int, base["keep_releases"])
    out["web"] = reader.get("web", str, base["web"])
    reader.check("web", lambda v: v in WEB_SERVERS,
                 f"must be {APACHE!r} or {NGINX!r} (the web server that balances the replicas)")
    reader.check("port", lambda v: 0 < v < 65536, "must be a TCP port (1-65535)")
    reader.check("root", _absolute_path,
                 f"must be an absolute path without '..'; {CONFIG_PATH_RULE}")
    out["root"] = normal(out["root"])
    reader.check("connect_timeout", lambda v: 0 < v <= MAX_CONNECT_TIMEOUT,
                 f"must be > 0 and <= {MAX_CONNECT_TIMEOUT:g} seconds")
    reader.check("command_timeout", lambda v: 0 < v <= MAX_COMMAND_TIMEOUT,
                 f"must be > 0 and <= {MAX_COMMAND_TIMEOUT:g} seconds")
    reader.check("keep_releases", lambda v: 2 <= v <= MAX_KEEP_RELEASES,
                 f"must be >= 2 (current and previous) and <= {MAX_KEEP_RELEASES}")
    reader.check("user", lambda v: bool(ACCOUNT.fullmatch(v)), "must be a user name")
    reader.check("setup_user", lambda v: bool(ACCOUNT.fullmatch(v)), "must be a user name")
    return out


def _web_server(reader: _Reader, base: WebServer) -> dict[str, str]:
    """The keys both web servers' tables share, checked."""
    shared = {"listen": reader.get("listen", str, base.listen),
              "user": reader.get("user", str, base.user),
              "group": reader.get("group", str, base.group)}
    reader.check("listen", lambda v: bool(re.fullmatch(r"^[\w.*:\[\]-]+$", v)),
                 "must look like ADDRESS:PORT or *:PORT")
    for key in ("user", "group"):
        reader.check(key, lambda v: bool(ACCOUNT.fullmatch(v)), "must be a user/group name")
    return shared


def _apache(reader: _Reader, base: Apache) -> Apache:
    apache = Apache(
        mode=reader.get("mode", str, base.mode),
        manager_port=reader.get("manager_port", int, base.manager_port),
        **_web_server(reader, base),
    )
    reader.check("mode", lambda v: v in APACHE_MODES, f"must be one of {', '.join(APACHE_MODES)}")
    reader.check("manager_port", lambda v: 0 < v < 65536, "must be a TCP port (1-65535)")
    if apache.port == apache.manager_port:
        # both would be rendered as `Listen`, and Apache refuses a second bind of one port
        raise reader.fail("listen", f"port {apache.port} is also the manager_port")
    reader.reject_unknown()
    return apache


def _nginx(reader: _Reader, base: Nginx) -> Nginx:
    nginx = Nginx(**_web_server(reader, base))
    reader.reject_unknown()
    return nginx


def _host(path: str, index: int, table: Any, base: Mapping[str, Any],
          servers: tuple[Apache, Nginx]) -> Host:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: hosts[{index}]: must be a table")
    named = isinstance(table.get("name"), str)
    reader = _Reader(path, f"hosts.{table['name']}" if named else f"hosts[{index}]", table)
    label = reader.prefix
    name = reader.get("name", str, required=True)
    reader.check("name", lambda v: bool(HOST_NAME.fullmatch(v)),
                 "must be letters, digits, '.', '_' or '-'")
    address = reader.get("address", str, required=True)
    reader.check("address", lambda v: bool(re.fullmatch(r"^[A-Za-z0-9.:_-]+$", v)),
                 "must be a host name or an IP address")
    settings = _host_settings(reader, base)
    host_apache = _apache(_Reader(path, f"{label}.apache", reader.get("apache", dict, {})),
                          servers[0])
    host_nginx = _nginx(_Reader(path, f"{label}.nginx", reader.get("nginx", dict, {})),
                        servers[1])
    reader.reject_unknown()
    sudo = settings["sudo"] if settings["sudo"] is not None else settings["user"] != "root"
    return Host(name=name, address=address, port=settings["port"], user=settings["user"],
                sudo=sudo, root=settings["root"], known_hosts=settings["known_hosts"],
                identity_file=settings["identity_file"],
                connect_timeout=settings["connect_timeout"],
                command_timeout=settings["command_timeout"],
                trust_new_host_keys=settings["trust_new_host_keys"],
                keep_releases=settings["keep_releases"], apache=host_apache,
                nginx=host_nginx, web=settings["web"],
                setup_user=settings["setup_user"] or settings["user"])


def _check_web_paths(r: _Reader) -> None:
    """document_root and front_controller end up in Apache directives: plain paths only."""
    r.check("document_root", lambda v: not v.startswith("/"),
            "must be relative to the release (e.g. 'public'), not absolute")
    r.check("document_root", lambda v: v == "" or bool(RELEASE_PATH.fullmatch(v.rstrip("/"))),
            "must be a path inside the release made of letters, digits, '.', '_', '-' and '/', "
            "without '..' or a segment starting with '.'")
    r.check("front_controller", lambda v: bool(RELEASE_PATH.fullmatch(v)),
            "must be a file inside document_root (e.g. 'index.php'), made of letters, digits, "
            "'.', '_', '-' and '/', without '..' or a segment starting with '.'")
    r.check("front_controller", lambda v: v.endswith(".php"),
            "must be a .php file (only PHP runs through the replicas)")


def _check_shared(r: _Reader, items: tuple[str, ...], written: tuple[str, ...]) -> None:
    """Shared items are paths inside the release, each replaced by a link into shared/: not
    the release itself ('.'), nothing outside it, and never one inside another."""
    for raw in written:
        if not _relative_or_absolute(raw) or PurePosixPath(raw).is_absolute():
            raise r.fail("shared", f"{raw!r} must be a relative path without '..' inside the "
                         "release, other than '.'")
    for i, a in enumerate(items):
        for b in items[i + 1:]:
            if _inside(PurePosixPath(a), PurePosixPath(b)) or \
                    _inside(PurePosixPath(b), PurePosixPath(a)):
                raise r.fail("shared", f"{a!r} and {b!r} overlap: list each path once")


def _repository(path: str, r: _Reader) -> str | None:
    """A URL as written; a local path from the inventory's directory. Whether it can be
    reached is found by `deploy --ref` only: other tasks do not need it."""
    value = r.optional("repository", str)
    r.check("repository", lambda v: bool(v.strip()) and not any(c in v for c in "\n\r\0"),
            "must name a git repository: a path or a URL")
    return value if value is None or is_url(value) else beside(path, value)


def _pool(path: str, name: str, table: Any) -> Pool:
    if not POOL_NAME.fullmatch(name):
        raise ConfigError(f"{path}: pools.{name}: pool names are lower-case letters, digits "
                          "and '-', starting with a letter")
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: pools.{name}: must be a table")
    r = _Reader(path, f"pools.{name}", table)
    pool = Pool(
        name=name,
        replicas=r.get("replicas", int, required=True),
        root=normal(r.get("root", str, name)),
        php_fpm=r.get("php_fpm", str, "/usr/sbin/php-fpm8.2"),
        user=r.get("user", str, "www-data"),
        group=r.get("group", str, "www-data"),
        ping_path=r.get("ping_path", str, "/fpm-ping"),
        status_path=r.get("status_path", str, "/fpm-status"),
        health_path=r.get("health_path", str, "/health.php"),
        balancer=r.get("balancer", str, name),
        manager_url=r.optional("manager_url", str),
        server_name=r.get("server_name", str, name),
        max_children=r.get("max_children", int, 5),
        retry=r.get("retry", int, 1),
        stop_timeout=r.get("stop_timeout", int, 60),
        source=beside(path, r.get("source", str, f"build/{name}")),
        shared=tuple(normal(item) for item in r.strings("shared")),
        before_activate=r.strings("before_activate"),
        after_activate=r.strings("after_activate"),
        document_root=r.get("document_root", str, "").rstrip("/"),
        front_controller=r.optional("front_controller", str),
        strategy=r.get("strategy", str, SURGE),
        keep_previous=r.get("keep_previous", bool, False),
        repository=_repository(path, r),
        build=r.strings("build"),
    )
    r.check("replicas", lambda v: v >= 2, "must be >= 2 (a pool needs a spare replica)")
    r.check("replicas", lambda v: v <= 64, "must be <= 64")
    r.check("root", _relative_or_absolute, "must be a path without '..', other than '/' or "
            f"'.'; {CONFIG_PATH_RULE}")
    r.check("php_fpm", _absolute_path, f"must be an absolute path; {CONFIG_PATH_RULE}")
    for key in ("ping_path", "status_path", "health_path"):
        r.check(key, lambda v: bool(URL_PATH.fullmatch(v)), "must be a URL path starting with '/'")
    r.check("balancer", lambda v: bool(POOL_NAME.fullmatch(v)), "must be a simple lower-case name")
    r.check("manager_url", lambda v: bool(re.fullmatch(r"^https?://[^\s/]+/\S*$", v)),
            "must be an http(s) URL")
    r.check("max_children", lambda v: 1 <= v <= MAX_CHILDREN, f"must be >= 1 and <= {MAX_CHILDREN}")
    r.check("retry", lambda v: 0 <= v <= 60, "must be 0..60 seconds")
    r.check("stop_timeout", lambda v: 1 <= v <= 3600, "must be 1..3600 seconds")
    r.check("strategy", lambda v: v in (SURGE, ROLLING), f"must be {SURGE!r} or {ROLLING!r}")
    r.check("keep_previous", lambda v: not v or pool.strategy == SURGE,
            "needs strategy = \"surge\" (the previous set parks in the standby slots)")
    r.check("server_name", lambda v: bool(re.fullmatch(r"^[A-Za-z0-9.*-]+$", v)),
            "must be a host name")
    for key in ("user", "group"):
        r.check(key, lambda v: bool(ACCOUNT.fullmatch(v)), "must be a user/group name")
    _check_web_paths(r)
    _check_shared(r, pool.shared, r.strings("shared"))
    r.reject_unknown()
    return pool


NOTIFY_FORMATS = ("json", "slack")
# printable ASCII only: http.client quotes a URL with a control character in its error
WEBHOOK_URL = re.compile(r"https?://[!-.0-9:-~]+(?:[/?#][!-~]*)?")


def read_notify(r: _Reader) -> Notify:
    """[notify]: a webhook URL may hold a secret (a token in its path, a password), so an
    error names the entry by its index, never by its text."""
    notify = Notify(webhooks=r.strings("webhooks"), format=r.get("format", str, "json"),
                    timeout=r.get("timeout", float, 5.0), retries=r.get("retries", int, 2))
    for i, url in enumerate(notify.webhooks):
        if not WEBHOOK_URL.fullmatch(url):
            raise r.fail(f"webhooks[{i}]", "must be an http:// or https:// URL (not shown: "
                         "it may hold a secret)")
    r.check("format", lambda v: v in NOTIFY_FORMATS, f"must be one of {', '.join(NOTIFY_FORMATS)}")
    r.check("timeout", lambda v: 0 < v <= 30, "must be > 0 and <= 30 seconds")
    r.check("retries", lambda v: 0 <= v <= 5, "must be 0..5")
    r.reject_unknown()
    return notify
