#!/bin/sh
# Managed by fpm-fleet: change the members of a pool's nginx upstream, as root.
# usage: nginx-members POOL          (the deploy user, through its sudoers line)
#        nginx-members --setup POOL  (fab setup: write and test only, no reload)
#        nginx-members --check       (a rollout's preflight: does nginx -t pass now?)
# stdin: one line per member, "N STATE", STATE one of up, drain, disable, park.
#
# The deploy user never writes nginx's configuration itself (nginx's master opens log
# files named there as root, so whoever writes it is root): it sends states, validated
# here, and this script writes the pool's upstream from its root-owned template. Then
# `nginx -t` (a failing config is put back, never loaded), a graceful reload (old workers
# finish the requests they hold), and the read-back: the members endpoint of the running
# nginx must answer the new states (newest workers only; `nginx -s reload` returns before
# the master has loaded anything), and no worker of the configuration before may still
# accept (it would answer the old states). On success it prints that answer.
set -u
if [ "${1:-}" = --check ]; then
    if ! out=$(nginx -t -q 2>&1); then
        printf "nginx's configuration on this host fails nginx -t (fix it first): %s\n" \
            "$out" >&2
        exit 3
    fi
    exit 0
fi
setup=0
if [ "${1:-}" = --setup ]; then setup=1; shift; fi
pool=${1:-}
case $pool in
    ''|[!a-z]*|*[!a-z0-9-]*) echo "nginx-members: bad pool name" >&2; exit 2 ;;
esac
template=/etc/fpm-fleet/nginx/$pool.upstream.in
conf=/etc/nginx/fpm-fleet/$pool.conf
socket=/run/fpm-fleet-nginx.sock
if [ ! -f "$template" ]; then
    echo "nginx-members: no upstream template for pool $pool: run fab setup" >&2; exit 2
fi

members="pool=$pool"
script=""
while read -r n state rest; do
    [ -z "$n" ] && continue
    case $n in ''|*[!0-9]*) echo "nginx-members: bad member number" >&2; exit 2 ;; esac
    case $state in
        up) param="" ;;
        drain|disable) param="down" ;;
        park) param="backup" ;;
        *) echo "nginx-members: bad state for member $n" >&2; exit 2 ;;
    esac
    if [ -n "$rest" ] || ! grep -q "@STATE_$n@" "$template"; then
        echo "nginx-members: member $n is not a slot of pool $pool" >&2; exit 2
    fi
    case "$members " in *" $n="*) echo "nginx-members: member $n given twice" >&2; exit 2 ;; esac
    members="$members $n=$state"
    script="$script s/ @STATE_$n@;/${param:+ $param};/;"
done

running() {
    curl -sS --max-time 2 --unix-socket "$socket" -H "Host: $pool" \
        http://fpm-fleet/members 2>/dev/null
}

# one change of nginx's configuration at a time on this host (pools change concurrently).
# The lock file is root's alone: whoever can open a file can flock it, and a PHP script
# (www-data) holding this lock would stop every change of the host's members.
lock=/run/fpm-fleet-nginx.lock
if ! { (umask 077 && : >> "$lock") && chmod 0600 "$lock"; }; then
    echo "nginx-members: cannot make its lock $lock" >&2; exit 1
fi
exec 9>"$lock"
flock 9

new=$conf.fpm-fleet-new
old=$conf.fpm-fleet-old
mkdir -p "$(dirname "$conf")"
sed -e "$script s/@MEMBERS@/$members/" "$template" > "$new" || exit 1
if grep -q "@STATE_[0-9]*@;" "$new"; then
    rm -f "$new"; echo "nginx-members: every member of pool $pool needs a state" >&2; exit 2
fi
if cmp -s "$new" "$conf" && { [ "$setup" = 1 ] || [ "$(running)" = "$members" ]; }; then
    rm -f "$new"
    [ "$setup" = 1 ] || echo "$members"
    exit 0
fi

restore() {
    if [ -e "$old" ]; then mv -f "$old" "$conf"; else rm -f "$conf"; fi
}
if [ -e "$conf" ]; then cp -p "$conf" "$old"; else rm -f "$old"; fi
mv -f "$new" "$conf"
if ! out=$(nginx -t -q 2>&1); then
    restore
    printf 'nginx -t refused the new upstream of pool %s (nothing changed): %s\n' \
        "$pool" "$out" >&2
    exit 3
fi
if [ "$setup" = 1 ]; then
    rm -f "$old"; echo "$conf"; exit 0
fi
# someone may be restarting or reloading nginx right now: its job makes ours fail, so wait
# until the service has settled and try again (a restart reads the new file anyway)
settled() {
    i=0
    while :; do
        state=$(systemctl is-active nginx.service 2>/dev/null)
        case $state in activating|deactivating|reloading) ;; *) break ;; esac
        i=$((i + 1)); [ "$i" -lt 150 ] || break
        sleep 0.1
    done
    [ "$state" = active ]
}
# nginx's workers that accept now: after the reload one of them may still accept, and
# answer the old states, for a moment after a new worker answered the new ones (until it
# handles the master's QUIT). A caller that read the members then would rewrite the
# others from those old states (a replica just put back would go down again).
accepting() {
    master=$(systemctl show -p MainPID --value nginx.service 2>/dev/null)
    case $master in ''|0|*[!0-9]*) return 0 ;; esac
    ps -o pid=,args= --ppid "$master" 2>/dev/null |
        awk '/worker process/ && !/shutting down/ { print $1 }'
}
# until no worker of `accepting` before the reload still accepts, at most 10 s: each is
# gone (a zombie has no title) or shutting down (it closes its listening sockets as it
# takes that title)
old_workers_quit() {
    tries=0
    for pid in $1; do
        while grep -qa "worker process" "/proc/$pid/cmdline" 2>/dev/null &&
            ! grep -qa "shutting down" "/proc/$pid/cmdline" 2>/dev/null; do
            tries=$((tries + 1))
            [ "$tries" -lt 1000 ] || return 1
            sleep 0.01
        done
    done
}
before=$(accepting)
reloaded=0
for _ in 1 2 3; do
    if out=$(systemctl reload nginx.service 2>&1); then reloaded=1; break; fi
    settled || break
done
if [ "$reloaded" = 0 ]; then
    restore
    printf 'nginx did not reload (is nginx.service running?): %s\n' "$out" >&2
    exit 4
fi
# the master starts new workers, then tells the old ones to stop accepting: until then
# an old worker may answer the states it was started with
tries=0
while [ "$(running)" != "$members" ]; do
    tries=$((tries + 1))
    if [ "$tries" -ge 100 ]; then
        restore
        printf 'nginx did not load the new upstream of pool %s within 10s (running: %s); ' \
            "$pool" "$(running || echo nothing)" >&2
        echo "its file was put back: see journalctl -u nginx" >&2
        exit 5
    fi
    sleep 0.1
done
if ! old_workers_quit "$before"; then
    printf 'nginx loaded the new upstream of pool %s, but a worker of the old ' "$pool" >&2
    echo "configuration still accepts connections after 10s: see journalctl -u nginx" >&2
    rm -f "$old"
    exit 5
fi
rm -f "$old"
echo "$members"
