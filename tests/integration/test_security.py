"""Security checks on a real mixed 2-host sandbox (h1 Apache, h2 nginx): host keys, quoting,
no secret in any output, and least privilege. The checks that depend on the web server (what
the deploy user may run as root, what a PHP script can do to the balancer) run on a host of
each (`web_host`); the others are about SSH and sudo and run once."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from fpm_fleet.sandbox.hosts import HOSTS_DIR

from .conftest import ROOT, SANDBOX, Sandbox, WebHost, fab, get, in_rotation, ok


@pytest.fixture(scope="module")
def box(mixed2: Sandbox) -> Sandbox:
    return mixed2


def with_known_hosts(box: Sandbox, tmp_path: Path, text: str, extra: str = "") -> Path:
    known = tmp_path / "known_hosts"
    known.write_text(text)
    inv = tmp_path / "hosts.toml"
    inv.write_text(box.path.read_text().replace(str(SANDBOX / "known_hosts"), str(known))
                   .replace("[defaults]\n", f"[defaults]\n{extra}"))
    return inv


def test_unknown_host_key_is_refused(box: Sandbox, tmp_path: Path) -> None:
    inv = with_known_hosts(box, tmp_path, "")
    before = box.status()
    proc = fab("restart", inventory_path=inv)
    assert proc.returncode == 3, proc.stderr
    assert "unknown host key" in proc.stderr
    status = fab("status", inventory_path=inv)
    assert status.returncode != 0 and "unreachable" in status.stdout
    assert [r["pid"] for r in box.status()] == [r["pid"] for r in before]


def test_changed_host_key_is_refused(box: Sandbox, tmp_path: Path) -> None:
    key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, body = key.with_suffix(".pub").read_text().split()[:2]
    lines = "".join(f"{a} {kind} {body}\n" for a in box.addresses())
    proc = fab("check", inventory_path=with_known_hosts(box, tmp_path, lines))
    assert proc.returncode != 0
    assert "does not match known_hosts" in proc.stdout + proc.stderr


def test_trusting_new_host_keys_is_an_explicit_opt_in(box: Sandbox, tmp_path: Path) -> None:
    inv = with_known_hosts(box, tmp_path, "# kept\n", extra="trust_new_host_keys = true\n")
    first = ok(fab("check", inventory_path=inv))
    assert first.stderr.count("trusted the new host key of") == len(box.addresses())
    saved = (tmp_path / "known_hosts").read_text().splitlines()
    assert saved[0] == "# kept" and len(saved) == 1 + len(box.addresses())
    again = ok(fab("check", inventory_path=inv))
    assert "trusted the new host key" not in again.stderr


def test_source_paths_with_spaces_and_shell_characters_deploy_safely(box: Sandbox,
                                                                     tmp_path: Path) -> None:
    source = tmp_path / "my app; touch pwned $(touch pwned) `touch pwned`"
    box.build("v7", files=2)
    subprocess.run(["cp", "-a", str(box.fleet.pools[0].source), str(source)], check=True)
    (source / "odd name ;$(x).txt").write_text("static\n")
    ok(fab("deploy", "--release", "v7", "--source", str(source)))
    for where in (ROOT, tmp_path, HOSTS_DIR / "home", Path("/")):
        assert not (where / "pwned").exists()
    for address in box.addresses():
        assert get(address, "/ping.php")[1].startswith("pong v7")
        assert get(address, "/odd%20name%20;$(x).txt")[1] == "static\n"


def test_no_secret_is_printed_or_logged(box: Sandbox) -> None:
    outputs = [fab(*args) for args in (("check",), ("status",), ("restart",),
                                       ("releases",), ("list",))]
    key = (SANDBOX / "id_ed25519").read_text()
    body = [line for line in key.splitlines() if line and "PRIVATE KEY" not in line]
    texts = [p.stdout + p.stderr for p in outputs]
    texts += [p.read_text() for p in (SANDBOX / "logs").glob("*.log")]
    for text in texts:
        assert "PRIVATE KEY" not in text
        assert not any(chunk in text for chunk in body)


# --- least privilege (issue 9, items 7 and 8) ---------------------------------------------------

def ssh(address: str, user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """One command on a host over SSH, as `user` (the sandbox's key logs in as root and
    deploy)."""
    return subprocess.run(["ssh", "-i", str(SANDBOX / "id_ed25519"), "-o", "BatchMode=yes",
                           "-o", f"UserKnownHostsFile={SANDBOX / 'known_hosts'}",
                           f"{user}@{address}", shlex.join(argv)],
                          capture_output=True, text=True, timeout=30, check=False)


def host_ids(box: Sandbox, user: str) -> tuple[int, int]:
    for line in box.on_host("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"no user {user}")


APACHE_ROOT = ["systemctl reload apache2.service", "apache2ctl configtest"]
NGINX_ROOT = ["/usr/local/lib/fpm-fleet/nginx-members www",
              "/usr/local/lib/fpm-fleet/nginx-members --check"]


def test_the_deploy_user_may_run_only_fpm_fleets_own_commands_as_root(
        box: Sandbox, web_host: WebHost) -> None:
    """The replica lines on every host, and only its own web server's (nginx's helper
    lines are tested further in test_nginx.py: another pool's, or as www-data)."""
    address = web_host.address
    assert ssh(address, "deploy", "sudo", "-n", "true").returncode != 0
    assert not box.on_host("/etc/sudoers.d/deploy", web_host.index).exists(), \
        "the broad rule is gone"
    own, other = ((NGINX_ROOT, APACHE_ROOT) if web_host.web == "nginx"
                  else (APACHE_ROOT, NGINX_ROOT))
    allowed = ["systemctl stop fpm-fleet-www@1.service",
               "journalctl --no-pager -o cat -n 5 -u fpm-fleet-www@2.service", *own]
    refused = ["systemctl stop fpm-fleet-www@1.service ssh.service",
               "systemctl start ssh.service", "systemctl stop fpm-fleet-www@9.service",
               "systemctl --now stop fpm-fleet-www@1.service", "journalctl -u ssh.service",
               "sh -c id", "apache2ctl -k stop", "systemctl reload nginx.service",
               "systemctl stop nginx.service", "/usr/sbin/nginx -s stop",
               "/usr/local/lib/fpm-fleet/nginx-members --setup www", *other]
    # sudo -l asks the policy without running anything; all of them over one login
    commands = allowed + refused
    asked = ssh(address, "deploy", "sh", "-c", "; ".join(
        f"sudo -n -l {command} >/dev/null 2>&1 && echo allowed || echo refused"
        for command in commands))
    assert asked.stdout.split() == ["allowed"] * len(allowed) + ["refused"] * len(refused), \
        list(zip(commands, asked.stdout.split(), strict=False))


def test_uploads_and_hooks_run_as_the_deploy_user_not_root(box: Sandbox, tmp_path: Path) -> None:
    inv = tmp_path / "hosts.toml"
    inv.write_text(box.path.read_text().replace(
        "[pools.www]\n", '[pools.www]\nbefore_activate = ["id -un > hook-user.txt"]\n'))
    box.build("v8")
    ok(fab("deploy", "--release", "v8", "--host", "h1", inventory_path=inv))
    release = box.pool_dir(0) / "releases" / "v8"
    assert (release / "hook-user.txt").read_text() == "deploy\n"
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in [release, *release.rglob("*")]}
    assert owners == {host_ids(box, "deploy")}
    conf = box.pool_dir(0) / "conf"
    assert (conf.stat().st_uid, box.pool_dir(0).stat().st_uid) == (0, 0), \
        "replica configs stay root's: a deploy user who wrote them could run PHP as root"


DRAIN_APACHE = """<?php
// A script of a deployed release that tries to take every member out of rotation through
// Apache's balancer-manager, and to read its credential.
$url = 'http://127.0.0.1:8081/balancer-manager';
function ask(string $url, string $method, string $body = ''): array {
    $ctx = stream_context_create(['http' => ['method' => $method, 'ignore_errors' => true,
        'header' => "Referer: $url\\r\\nContent-Type: application/x-www-form-urlencoded\\r\\n",
        'content' => $body]]);
    $page = @file_get_contents($url, false, $ctx);
    return [(string) $page, $http_response_header[0] ?? 'no answer'];
}
[$page, $read] = ask("$url?xml=1", 'GET');
preg_match('/<httpd:nonce>([^<]*)/', $page, $m);
$drain = [];
foreach ([1, 2] as $n) {
    $form = http_build_query(['b' => 'www', 'w' => "unix:RUN/www-$n.sock|fcgi://www-$n",
                              'nonce' => $m[1] ?? '', 'w_status_N' => 1]);
    $drain[] = ask($url, 'POST', $form)[1];
}
echo json_encode(['read' => $read, 'drain' => $drain,
                  'netrc' => @file_get_contents('/etc/fpm-fleet/balancer-manager.netrc')
                             !== false]);
"""

DRAIN_NGINX = """<?php
// A script of a deployed release (PHP runs as www-data, as nginx's workers do) that tries
// every way it has to take the members of nginx's upstream out of rotation: the root
// helper (through sudo, and as itself), the upstream file and its template, a reload of
// nginx's master, and the helper's lock (held, it would stop every change on the host).
function helper(string $command): int {
    $p = proc_open($command, [['pipe', 'r'], ['pipe', 'w'], ['pipe', 'w']], $pipes);
    fwrite($pipes[0], "1 drain\\n2 drain\\n");
    fclose($pipes[0]);
    stream_get_contents($pipes[1]);
    stream_get_contents($pipes[2]);
    return proc_close($p);
}
$helper = '/usr/local/lib/fpm-fleet/nginx-members';
$lock = @fopen('/run/fpm-fleet-nginx.lock', 'r');
echo json_encode([
    'user' => posix_getpwuid(posix_geteuid())['name'],
    'sudo helper' => helper("sudo -n $helper www"),
    'helper' => helper("$helper www"),
    'upstream' => @file_put_contents('/etc/nginx/fpm-fleet/www.conf', "\\n", FILE_APPEND),
    'template' => @file_put_contents('/etc/fpm-fleet/nginx/www.upstream.in', "\\n",
                                     FILE_APPEND),
    'reload' => posix_kill((int) @file_get_contents('/run/nginx.pid'), 1),
    'lock' => $lock !== false && flock($lock, LOCK_EX | LOCK_NB),
]);
"""


def test_a_php_script_of_a_release_cannot_drain_the_balancer_members(
        box: Sandbox, web_host: WebHost, tmp_path: Path) -> None:
    source = tmp_path / "app"
    box.build("v9")
    subprocess.run(["cp", "-a", str(box.fleet.pools[0].source), str(source)], check=True)
    run = box.remote_pool_dir(web_host.index) / "run"
    script = DRAIN_NGINX if web_host.web == "nginx" else DRAIN_APACHE.replace("RUN", str(run))
    (source / "drain.php").write_text(script)
    ok(fab("deploy", "--release", "v9", "--host", web_host.name, "--source", str(source)))
    before = box.status("--host", web_host.name)
    status, body = get(web_host.address, "/drain.php")
    assert status == 200, body
    answer = json.loads(body)
    if web_host.web == "nginx":
        assert answer["user"] == "www-data", answer
        assert answer["sudo helper"] != 0 and answer["helper"] != 0, answer
        assert answer["upstream"] is False and answer["template"] is False, answer
        assert answer["reload"] is False and answer["lock"] is False, answer
    else:
        assert "401" in answer["read"], answer
        assert all("401" in code for code in answer["drain"]), answer
        assert answer["netrc"] is False, "PHP workers can read the credential"
        netrc = box.on_host("/etc/fpm-fleet/balancer-manager.netrc", web_host.index).stat()
        assert (netrc.st_mode & 0o777, netrc.st_uid, netrc.st_gid) == (
            0o640, 0, host_ids(box, "deploy")[1])
    rows = box.status("--host", web_host.name)
    assert [r["web"] for r in rows] == [web_host.web] * 2
    assert all(in_rotation(r) for r in rows), rows
    assert [(r["lb_status"], r["pid"]) for r in rows] == [
        (r["lb_status"], r["pid"]) for r in before], "the members or replicas changed"


def test_setup_as_the_deploy_user_says_it_needs_full_root(box: Sandbox, tmp_path: Path) -> None:
    inv = tmp_path / "hosts.toml"
    inv.write_text(box.path.read_text().replace('setup_user = "root"', 'setup_user = "deploy"'))
    proc = fab("setup", "--host", "h1", inventory_path=inv)
    assert proc.returncode != 0
    assert "fab setup needs full root" in proc.stdout + proc.stderr
