# shellcheck shell=sh
# The replica probe: sent after replica-lib.sh (count_workers_outside), then called once per
# replica as `probe N PIDFILE MOUNT-ROOT POOL-N SERVICE-STATE`. Prints one TSV line of 8
# fields: N, the master's pid, its state, its age in seconds, its process title, the release
# mounted on MOUNT-ROOT (as mountinfo escapes it) in its mount namespace, the service's state
# (as the caller read it: one `systemctl is-active` for every replica) and how many of the
# replica's workers run outside that master.
# "-" stands for what is not there (no pid file, no such process, nothing mounted).
# The caller sets FPM_FLEET_PS once (replica-lib.sh's processes) so that a pool's replicas
# share one read of the process table. A probe costs a few processes: it runs for every
# replica of a pool in each rollout's preflight.
probe() {
  pid=
  read -r pid 2>/dev/null <"$2"
  case $pid in ''|*[!0-9]*) pid=-;; esac
  # state (the first letter of ps's STAT is /proc's State) and age, in one ps
  read -r state etimes <<PS
$(ps -o stat=,etimes= -p "$pid" 2>/dev/null)
PS
  state=${state%"${state#?}"}
  title=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | head -n 1)
  pinned=$(mp="$3" awk '$5 == ENVIRON["mp"] {m = $4} END {if (m != "") print m}' \
    "/proc/$pid/mountinfo" 2>/dev/null)
  strays=$(count_workers_outside "$pid" "php-fpm: pool $4")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$pid" "${state:--}" "${etimes:--}" \
    "${title:--}" "${pinned:--}" "${5:--}" "$strays"
}
