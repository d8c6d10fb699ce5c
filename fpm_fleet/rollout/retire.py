"""The old set's retirement, left to the host (ARCHITECTURE.md, "Surge rollouts").

Once a surge rollout has flipped the balancer (the new set in rotation, the old one
drained), what is left decides nothing: wait for the old set's longest request, stop it,
mark its members disabled, enable the new set's services at boot. Under slow requests that
is seconds of waiting, so the host does it by itself, in a job detached from the SSH session,
and `fab deploy` returns once the new release serves.

The job holds the pool's retire lock (state/retire.lock, flock) from before the command that
starts it returns until it is done, and is bounded by `timeout`. Every later rollout of the
pool waits on that lock first (`wait_retired`, in the preflight), so nothing else touches
the pool's replicas meanwhile; `status` shows the set as retiring. A reboot or a kill ends
the job and frees the lock: the old set is then drained but running, and the next preflight
finds a replica out of rotation that runs another release than current.release, which it
leaves out; the next surge stops it before using its slots. Its log is state/retire.log.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from fpm_fleet.core.errors import RemoteResult, RolloutError
from fpm_fleet.host import fpm
from fpm_fleet.host.layout import Layout
from fpm_fleet.host.pool import HostPool, Replica
from fpm_fleet.remote.command import Command, action
from fpm_fleet.remote.shell import q, with_replica_lib
from fpm_fleet.web import server
from fpm_fleet.web.balancer import Balancer

GRACE = 30  # seconds beyond stop_timeout the job and its waiters are given


def lock_path(layout: Layout) -> PurePosixPath:
    return layout.state / "retire.lock"


def log_path(layout: Layout) -> PurePosixPath:
    return layout.state / "retire.log"


def job_script(at: HostPool, old: list[Replica], new: list[Replica], bal: Balancer) -> str:
    """What the job runs (pure): enable the new set at boot, wait until no connection is
    open on each old replica's socket, stop the old set (graceful, disabled at boot), then
    mark its members disabled (Apache: with the nonce read at the flip: should Apache
    restart meanwhile, the members come back from its config and fail over at connect;
    nginx: the states read back at the flip, the old set's now disabled)."""
    layout, sudo = at.layout, at.host.sudo
    ticks = at.pool.stop_timeout * 10
    lines = [f"echo \"$(date -Is) retiring {_names(old)}; {_names(new)} serve\""]
    lines += [fpm.enable_command(layout, r.n, sudo) for r in new]
    lines += [f"echo \"{r.name} unused after $(wait_unused {q(r.sock)} {ticks})00 ms\""
              for r in old]
    if old:
        lines.append(fpm.stop_set_command(layout, [r.n for r in old], sudo))
        lines.append(server.disable_command(at, bal, old) + " >/dev/null")
    lines.append("echo \"$(date -Is) done\"")
    return with_replica_lib("\n".join(lines))


def retire(at: HostPool, old: list[Replica], new: list[Replica],
           bal: Balancer) -> Command[RemoteResult]:
    """Start the job, detached (setsid), with the retire lock taken here and handed to it
    (fd 9): the lock is held before this command returns, so no later run can slip in."""
    lock, log = q(lock_path(at.layout)), q(log_path(at.layout))
    bound = at.pool.stop_timeout + GRACE
    job = f"timeout -k 5 {bound} sh -c {q(job_script(at, old, new, bal))}"
    text = (f"exec 9>>{lock} && flock -w {bound} 9 && "
            f"setsid -f {job} >{log} 2>&1 </dev/null")
    what = f"retire {_names(old)} on the host" if old else f"enable {_names(new)} at boot"
    return action(text, what)


def wait_retired(at: HostPool) -> Command[float]:
    """Wait until no retire job of the pool runs; the answer is the seconds waited. Bounded:
    a job still running then fails the command (RolloutError) naming its log. No `exit` in
    the text: it may share a round trip with other reads (`together`)."""
    lock, bound = q(lock_path(at.layout)), at.pool.stop_timeout + GRACE
    # on a descriptor (released as the braces end): the usual case, no job running, costs
    # one process; the clock is read only when there is a wait to time
    text = (f"if [ -e {lock} ]; then {{ if flock -n 9; then echo 0; else s=$(date +%s%N); "
            f"if flock -w {bound} 9; then echo $(( ($(date +%s%N) - s) / 1000000 )); "
            f"else (exit 75); fi; fi; }} 9<{lock}; else echo 0; fi")

    def read(res: RemoteResult) -> float:
        if res.exited == 75:
            raise RolloutError(f"{at.host.name}: the {at.pool.name} old set is still retiring "
                               f"after {bound}s; see {log_path(at.layout)}")
        if not res.ok:
            raise ValueError(f"exit {res.exited}: {res.stderr.strip()}")
        return int(res.stdout.strip() or 0) / 1000

    return Command(text, f"wait for {at.pool.name} retirement", read, check=False,
                   timeout=bound + 10, assume=lambda: 0.0)


def _names(replicas: list[Replica]) -> str:
    return ",".join(r.name for r in replicas) or "none"
