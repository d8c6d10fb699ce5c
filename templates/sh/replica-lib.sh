# shellcheck shell=sh
# Managed by fpm-fleet: what a replica's workers and open connections are, in one place.
# Sent ahead of the commands that use it (the replica probe, the stop) and installed beside
# the stop script, which sources it. Only function definitions: sourcing it runs nothing.

# The process table as "pid ppid args" lines: the snapshot in FPM_FLEET_PS when a caller
# took one (the probe reads it once for every replica of a pool, not once per replica),
# else read now.
processes() {
    if [ -n "${FPM_FLEET_PS:-}" ]; then
        printf '%s\n' "$FPM_FLEET_PS"
    else
        ps -eo pid=,ppid=,args=
    fi
}

# Print the pid of every process titled exactly $2 (a replica's workers, "php-fpm: pool
# www-1") whose parent is not $1, the replica's live master ("-" when it has none): workers
# a dead master left serving. Titles are compared trimmed (ps pads, args may end in spaces).
workers_outside() {
    processes | awk -v m="$1" -v t="$2" '$2 != m { p = $1; $1 = ""; $2 = "";
        sub(/^ +/, ""); sub(/ +$/, ""); if ($0 == t) print p }'
}

# How many processes workers_outside prints, for several replicas in one pass over the
# process table: each argument is "MASTER-PID TITLE"; prints one count per argument, in
# order. The match is workers_outside's.
count_strays() {
    processes | specs="$(printf '%s\n' "$@")" awk '
        BEGIN { n = split(ENVIRON["specs"], s, "\n")
                for (i = 1; i <= n; i++) { cut = index(s[i], " ")
                    m[i] = substr(s[i], 1, cut - 1); t[i] = substr(s[i], cut + 1); c[i] = 0 } }
        { ppid = $2; $1 = ""; $2 = ""; sub(/^ +/, ""); sub(/ +$/, "")
          for (i = 1; i <= n; i++) if ($0 == t[i] && ppid != m[i]) c[i]++ }
        END { for (i = 1; i <= n; i++) print c[i] }'
}

# count_strays for one replica: $1 its master ("-" for none), $2 its workers' title.
count_workers_outside() {
    count_strays "$1 $2"
}

# How many connections to the listening unix socket $1 are open right now, from the
# kernel's table ($2, /proc/net/unix unless given): requests in flight, even to workers
# whose master died. Accepted ones read state 03 (connected); those still queued for
# accept() read 02 (connecting), with the path but no inode; the listener itself reads 01.
open_connections() {
    p="$1" awk '($6 == "02" || $6 == "03") && $8 == ENVIRON["p"] {n++} END {print n + 0}' \
        "${2:-/proc/net/unix}"
}

# Wait until the unix socket $1 has had no open connection for two readings in a row, 0.1 s
# apart (a request Apache routed just before a drain connects a moment later), or $2 tenths
# of a second have passed. Prints how many tenths it waited.
wait_unused() {
    i=0; quiet=0
    while [ "$quiet" -lt 2 ] && [ "$i" -lt "$2" ]; do
        if [ "$(open_connections "$1")" -gt 0 ]; then quiet=0; else quiet=$((quiet + 1)); fi
        [ "$quiet" -ge 2 ] || { i=$((i + 1)); sleep 0.1; }
    done
    echo "$i"
}

# For each process of $2...: the source (root) of the mount on $1 in its mount namespace,
# as mountinfo escapes it, one line per process in order; "-" when there is none (or no
# such process). Fields 4 and 5 of a mountinfo line are the mount's root and its mount
# point; the last mount on the point is the one seen. One awk reads every process's file
# (this runs for every replica in every probe and start; the shell's own `read` takes a
# system call per byte: 2 ms a file). It opens them with getline, which answers -1 for a
# process gone meanwhile, where a file named on mawk's command line would end the run.
mount_roots() {
    _point=$1
    shift
    point=$_point awk 'BEGIN {
        for (i = 1; i < ARGC; i++) {
            file = "/proc/" ARGV[i] "/mountinfo"; root = "-"
            while ((getline line < file) > 0) {
                split(line, field, " ")
                if (field[5] == ENVIRON["point"]) root = field[4]
            }
            close(file)
            print root
        }
    }' "$@"
}
