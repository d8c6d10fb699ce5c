"""Hook commands are shown with their secrets masked."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest
from fakes import FakePool, FakeRunner, dry_run_deploy

from fpm_fleet import report
from fpm_fleet.core.errors import RolloutError
from fpm_fleet.core.redact import redact
from fpm_fleet.host.layout import Layout
from fpm_fleet.host.pool import HostPool
from fpm_fleet.releases import commands as release_shell
from fpm_fleet.rollout import deploy


@pytest.mark.parametrize(("command", "shown"), [
    ("APP_KEY=base64:s3cr3t php artisan config:cache",
     "APP_KEY=*** php artisan config:cache"),
    ("env DB_PASSWORD='a b c' TOKEN=\"x y\" ./migrate",
     "env DB_PASSWORD=*** TOKEN=*** ./migrate"),
    ("export SECRET=abc; ./warm", "export SECRET=***; ./warm"),
    ("./deploy --password=hunter2 --api-key abc123 --verbose",
     "./deploy --password=*** --api-key *** --verbose"),
    ("php migrate.php mysql://app:pa55@db:3306/app", "php migrate.php mysql://app:***@db:3306/app"),
    ("EMPTY= ./x", "EMPTY=*** ./x"),
])
def test_secrets_in_a_hook_command_are_masked(command, shown):
    assert redact(command) == shown


@pytest.mark.parametrize("command", [
    "php bin/console cache:warmup --env=prod",
    "test -f ping.php",
    "[ \"$a\" = b ] && composer dump-autoload -o",
    "cp ../shared/config.php config.php",
])
def test_commands_without_secrets_are_shown_as_they_are(command):
    assert redact(command) == command


def test_the_built_hook_command_is_masked_inside_its_quotes():
    layout = Layout(dir=PurePosixPath("/srv/fpm-fleet/www"), pool="www")
    built = release_shell.before_activate(layout, "v2", "APP_SECRET=xyz php warm.php")
    assert "xyz" not in redact(built) and "APP_SECRET=***" in redact(built)


def test_a_failing_hook_is_reported_without_its_secret(web):
    host, pool = web
    runner = FakeRunner(host, default=(1, "", "boom"))
    with pytest.raises(RolloutError) as info:
        deploy._before_activate(HostPool(runner, host, pool), "v2",
                                "DB_PASSWORD=hunter2 ./migrate")
    assert "hunter2" not in str(info.value) and "DB_PASSWORD=*** ./migrate" in str(info.value)
    assert "hunter2" not in runner.whats[0]


@pytest.fixture
def hooked_dry_run(inventory_data, build_fleet, tmp_path, monkeypatch):
    """The plan of a dry-run deploy of a pool whose hook holds a secret."""
    monkeypatch.setattr("fpm_fleet.rollout.replica.POLL", 0)
    inventory_data["pools"]["www"]["before_activate"] = ["APP_KEY=s3cr3t php warm.php"]
    inventory_data["pools"]["www"]["after_activate"] = ["API_TOKEN=s3cr3t ./restart-workers"]
    fleet = build_fleet(inventory_data)
    source = tmp_path / "build"
    source.mkdir()
    (source / "index.php").write_text("<?php echo 1;\n")
    return dry_run_deploy(FakePool(fleet.hosts[0], fleet.pool("www")), source)


def test_the_dry_run_names_hooks_without_their_secrets(hooked_dry_run):
    hooks = [p for p in hooked_dry_run if p.what.startswith("before_activate")]
    assert [p.what for p in hooks] == ["before_activate APP_KEY=*** php warm.php"]


def test_the_dry_run_plans_after_activate_after_the_activation_masked(hooked_dry_run):
    hooked = [p for p in hooked_dry_run if p.what.startswith("after_activate")]
    assert [p.what for p in hooked] == ["after_activate API_TOKEN=*** ./restart-workers"]
    assert "s3cr3t" not in hooked[0].command
    changes = [p.what for p in hooked_dry_run if p.kind == "change"]
    assert changes.index(hooked[0].what) > changes.index("activate v2")


def test_the_dry_run_shows_hooks_without_their_secrets(hooked_dry_run, capsys):
    report.plan("deploy", hooked_dry_run, reads=True)
    shown = capsys.readouterr().out
    assert "APP_KEY=***" in shown
    assert "s3cr3t" not in shown
