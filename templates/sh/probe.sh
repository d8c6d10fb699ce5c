# shellcheck shell=sh
# The replica probe: sent after replica-lib.sh, then called once per replica as
# `probe N PID PINNED SERVICE-STATE STRAYS`, PID the one its pid file names ("-" for
# none). Prints one TSV line of 8 fields: N, the master's pid, its state, its age in
# seconds, its process title, the release mounted on the pool's current/ in its mount
# namespace (PINNED, as mountinfo escapes it), the service's state and how many of the
# replica's workers run outside that master. "-" stands for what is not there (no pid
# file, no such process, nothing mounted).
# It runs for every replica of a pool in each rollout's preflight and gate, so it starts no
# process of its own: the caller read every master's state, age and title with one ps
# (FPM_FLEET_MASTERS, "PID STAT ETIMES ARGS" lines), the services' states with one
# systemctl, the strays with one pass over the process table (replica-lib.sh's
# count_strays) and the mounts with one awk (replica-lib.sh's mount_roots).
probe() {
  pid=$2 state='' etimes='' title=''
  # the title is the rest of the line (read trims the padding ps adds)
  while read -r p s e t; do
    [ "$p" = "$pid" ] && { state=$s etimes=$e title=$t; }
  done <<PS
${FPM_FLEET_MASTERS:-}
PS
  state=${state%"${state#?}"}  # the first letter of ps's STAT is /proc's State
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$pid" "${state:--}" "${etimes:--}" \
    "${title:--}" "${3:--}" "${4:--}" "${5:-0}"
}
