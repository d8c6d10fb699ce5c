"""Where everything of a pool lives on a host (ARCHITECTURE.md, "Host model"): pure paths,
no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from fpm_fleet.core.inventory import Host, Pool, replica_name
from fpm_fleet.remote import shell


@dataclass(frozen=True)
class Layout:
    """The directory model of one pool on one host."""

    dir: PurePosixPath
    pool: str
    document_root: str = ""

    @classmethod
    def of(cls, host: Host, pool: Pool) -> Layout:
        return cls(dir=host.pool_dir(pool), pool=pool.name, document_root=pool.document_root)

    @property
    def releases(self) -> PurePosixPath:
        return self.dir / "releases"

    @property
    def current_release(self) -> PurePosixPath:
        """The symlink swapped atomically on activation."""
        return self.dir / "current.release"

    @property
    def previous_release(self) -> PurePosixPath:
        """The symlink to the release current.release named before its last activation,
        repointed in the same command: static files of pages still rendered by old replicas."""
        return self.dir / "previous.release"

    @property
    def current(self) -> PurePosixPath:
        """The empty mount point every replica pins its release on."""
        return self.dir / "current"

    @property
    def web_root(self) -> PurePosixPath:
        """Where Apache serves static files: document_root of the active release."""
        return self.current_release / self.document_root

    @property
    def fallback_web_root(self) -> PurePosixPath:
        """Where Apache looks for a static file the active release lacks (an old page's
        hashed asset during a rollout): document_root of the previous release."""
        return self.previous_release / self.document_root

    @property
    def pinned_web_root(self) -> PurePosixPath:
        """document_root as a replica sees it (PHP's SCRIPT_FILENAME lives under it)."""
        return self.current / self.document_root

    @property
    def shared(self) -> PurePosixPath:
        return self.dir / "shared"

    @property
    def run(self) -> PurePosixPath:
        return self.dir / "run"

    @property
    def log(self) -> PurePosixPath:
        return self.dir / "log"

    @property
    def conf(self) -> PurePosixPath:
        return self.dir / "conf"

    @property
    def state(self) -> PurePosixPath:
        """Deploy bookkeeping: lock, history, bad releases."""
        return self.dir / "state"

    @property
    def incoming(self) -> PurePosixPath:
        """Uploads land here and become releases only once verified."""
        return self.dir / "incoming"

    def release(self, name: str) -> PurePosixPath:
        return self.releases / name

    def replica(self, n: int) -> str:
        return replica_name(self.pool, n)

    def sock(self, n: int) -> PurePosixPath:
        return self.run / f"{self.replica(n)}.sock"

    def status_sock(self, n: int) -> PurePosixPath:
        return self.run / f"{self.replica(n)}-status.sock"

    def pid(self, n: int) -> PurePosixPath:
        return self.run / f"{self.replica(n)}.pid"

    def fpm_conf(self, n: int) -> PurePosixPath:
        return self.conf / f"{self.replica(n)}.conf"

    def unit(self, n: int) -> str:
        """Replica n's systemd service (an instance of the pool's template unit)."""
        return f"fpm-fleet-{self.pool}@{n}.service"

    @property
    def unit_file(self) -> PurePosixPath:
        """The pool's template unit: one service per replica, `fpm-fleet-<pool>@<n>`."""
        return PurePosixPath(f"/etc/systemd/system/fpm-fleet-{self.pool}@.service")

    def directories(self) -> tuple[PurePosixPath, ...]:
        return (self.dir, self.releases, self.current, self.shared, self.run, self.log,
                self.conf, self.state, self.incoming)

    def deploy_owned(self) -> tuple[PurePosixPath, ...]:
        """What the deploy user writes (uploads, hooks, state). The rest stays root's: conf/
        (a deploy user who could write an FPM config could run PHP as root) and run/ (the
        root FPM master writes its pid file there, and would follow a planted symlink)."""
        return (self.releases, self.shared, self.state, self.incoming)


APACHE_SITE = PurePosixPath("/etc/apache2/sites-available/fpm-fleet.conf")
# balancer-manager's credential, made by `fab setup` on the host (the password never leaves
# it): the client's netrc, readable only by root and the deploy user, and Apache's htpasswd
# (a bcrypt hash of it, readable by Apache's user).
MANAGER_NETRC = PurePosixPath("/etc/fpm-fleet/balancer-manager.netrc")
MANAGER_HTPASSWD = PurePosixPath("/etc/fpm-fleet/balancer-manager.htpasswd")
MANAGER_LOGIN = "fpm-fleet"
# What the deploy user may run as root (rendered from etc/sudoers.d/fpm-fleet).
SUDOERS = PurePosixPath("/etc/sudoers.d/fpm-fleet")
# The ExecStop of every replica service (one copy per host, shared by the pools).
STOP_SCRIPT = PurePosixPath("/usr/local/lib/fpm-fleet/replica-stop")

# nginx (`web = "nginx"`): the site, the FastCGI parameters it includes, each pool's upstream
# (written by the nginx-members helper from its root-owned template) and the unix socket on
# which the running nginx answers each pool's member states.
NGINX_SITE = PurePosixPath("/etc/nginx/sites-available/fpm-fleet.conf")
NGINX_SITE_LINK = PurePosixPath("/etc/nginx/sites-enabled/fpm-fleet.conf")
NGINX_PARAMS = PurePosixPath("/etc/nginx/snippets/fpm-fleet-fastcgi.conf")
NGINX_UPSTREAMS = PurePosixPath("/etc/nginx/fpm-fleet")
NGINX_TEMPLATES = PurePosixPath("/etc/fpm-fleet/nginx")
NGINX_MEMBERS = PurePosixPath(shell.NGINX_MEMBERS)
NGINX_SOCKET = PurePosixPath("/run/fpm-fleet-nginx.sock")


def nginx_upstream(pool: str) -> PurePosixPath:
    """The pool's upstream as nginx includes it (the helper writes it)."""
    return NGINX_UPSTREAMS / f"{pool}.conf"


def nginx_template(pool: str) -> PurePosixPath:
    """The root-owned template the helper writes the pool's upstream from."""
    return NGINX_TEMPLATES / f"{pool}.upstream.in"
