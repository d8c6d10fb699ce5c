# shellcheck shell=sh
# The replica probe: sent after replica-lib.sh (count_workers_outside), then called once per
# replica as `probe N PIDFILE MOUNT-ROOT UNIT POOL-N`. Prints one TSV line of 8 fields: N,
# the master's pid, its state, its age in seconds, its process title, the release mounted on
# MOUNT-ROOT (as mountinfo escapes it) in its mount namespace, the service's state
# (systemctl is-active) and how many of the replica's workers run outside that master.
# "-" stands for what is not there (no pid file, no such process, nothing mounted).
# The caller sets FPM_FLEET_PS once (replica-lib.sh's processes) so that a pool's replicas
# share one read of the process table.
probe() {
  service=$(systemctl is-active "$4" 2>/dev/null); [ -n "$service" ] || service=-
  pid=$(head -n 1 -- "$2" 2>/dev/null)
  case $pid in ''|*[!0-9]*) pid=-;; esac
  state=$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$pid/status" 2>/dev/null)
  [ -n "$state" ] || state=-
  etimes=$(ps -o etimes= -p "$pid" 2>/dev/null | tr -d ' ')
  title=$(tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | head -n 1)
  pinned=$(mp="$3" awk '$5 == ENVIRON["mp"] {print $4}' "/proc/$pid/mountinfo" 2>/dev/null \
    | tail -n 1)
  strays=$(count_workers_outside "$pid" "php-fpm: pool $5")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$pid" "$state" "${etimes:--}" "${title:--}" \
    "${pinned:--}" "$service" "$strays"
}
