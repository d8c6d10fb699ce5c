#!/bin/sh
# Managed by fpm-fleet: ExecStopPost of every replica service (fpm-fleet-<pool>@<n>).
# usage: replica-stop SOCKET POOL-N TIMEOUT
#
# The unit's KillMode=process sends its stop signal (SIGQUIT, graceful) to the master
# only, which stops its own workers; fpm-fleet drains the replica and waits until it is
# idle first. But a master that died by itself (a crash, kill -9) leaves its workers running:
# they still hold requests, and would take new ones from Apache. systemd runs this script
# then too, with the workers still there: make the socket unreachable (Apache's connect
# fails and it sends the request to another replica), wait until no connection is open
# on it, then stop the idle workers gracefully. Only then is the replica started again.

# workers_outside and open_connections, installed beside this script
# shellcheck source-path=SCRIPTDIR source=replica-lib.sh
. "$(dirname -- "$0")/replica-lib.sh"

sock=$1
title="php-fpm: pool $2"
ticks=$(( ${3:-60} * 10 ))

# systemd runs this once the master has exited: every worker left runs outside it ("-")
workers() {
    workers_outside - "$title"
}

[ -n "$(workers)" ] || exit 0
echo "the master is gone; its workers finish what they hold, then stop" >&2
rm -f -- "$sock"
i=0
while [ "$(open_connections "$sock")" -gt 0 ] && [ "$i" -lt "$ticks" ]; do
    i=$((i + 1)); sleep 0.1
done
# shellcheck disable=SC2046 # a list of pids: one word each, split on purpose
kill -QUIT $(workers) 2>/dev/null
i=0
while [ -n "$(workers)" ]; do
    i=$((i + 1))
    if [ "$i" -eq 50 ]; then
        echo "workers still running 5s after SIGQUIT: SIGKILL" >&2
        # shellcheck disable=SC2046 # a list of pids, as above
        kill -KILL $(workers) 2>/dev/null
    fi
    sleep 0.1
done
