# shellcheck shell=sh
# The replica probe: sent after replica-lib.sh, then called once per replica as
# `probe N PID MOUNT-ROOT SERVICE-STATE STRAYS`, PID the one its pid file names ("-" for
# none). Prints one TSV line of 8 fields: N, the master's pid, its state, its age in
# seconds, its process title, the release mounted on MOUNT-ROOT (as mountinfo escapes it)
# in its mount namespace, the service's state and how many of the replica's workers run
# outside that master. The caller reads the last two for every replica at once (one
# systemctl, one pass over the process table: replica-lib.sh's count_strays).
# "-" stands for what is not there (no pid file, no such process, nothing mounted).
# It runs for every replica of a pool in each rollout's preflight and gate: two processes.
probe() {
  pid=$2
  # state (the first letter of ps's STAT is /proc's State), age and title in one ps; the
  # title is the rest of the line (read trims the padding ps adds)
  read -r state etimes title <<PS
$(ps -o stat=,etimes=,args= -p "$pid" 2>/dev/null)
PS
  state=${state%"${state#?}"}
  pinned=$(mp="$3" awk '$5 == ENVIRON["mp"] {m = $4} END {if (m != "") print m}' \
    "/proc/$pid/mountinfo" 2>/dev/null)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$pid" "${state:--}" "${etimes:--}" \
    "${title:--}" "${pinned:--}" "${4:--}" "${5:-0}"
}
