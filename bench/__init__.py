"""fpm-fleet benchmarks: `bench/run [--quick]`.

One command that brings up the local test fleet (the sandbox: Debian 12 hosts booted with
systemd, systemd-nspawn containers on 198.18.0.0/24, each with Debian's sshd and Apache and
PHP-FPM replicas as systemd services, driven over SSH as the user `deploy`, whose sudo allows
only fpm-fleet's sudoers lines), measures, tears the fleet down again, prints tables and
writes JSON to bench/results/:

1. zero downtime: requests failed under constant load during a rolling `fab restart`,
   versus a plain `kill -USR2` reload (process_control_timeout 0 and 10s), versus nothing;
2. the tool's own cost: rollout wall time versus the waits it cannot avoid;
3. upload: first and one-file-changed deploy of a ~5,000-file release, versus a plain tar;
4. the peer: Capistrano 3 (bench/capistrano: symlink switch, `kill -USR2`) against
   `fab deploy` on one host under the same load: failures, latencies, wall time and the
   time until every new request is answered by the new release;
5. fleet scale: `fab sandbox.up` (boot), `fab deploy` (sequential and --parallel N) and
   `fab status` for 1, 3, 6 hosts.

Every load loop is bounded in count and time, traffic goes only to the sandbox hosts, and
the whole run holds the machine's sandbox lock (/tmp/fpm-fleet-sandbox.lock).
One module per concern: main (orchestration), profile, lock, sandbox, load, reload, fpmconf,
downtime, steps, upload, peer, scale, machine, results, tables, render.
"""
