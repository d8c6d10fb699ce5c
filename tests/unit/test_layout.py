"""tasks.layout: where a pool's files live on a host (DESIGN.md section 1)."""

from __future__ import annotations

from pathlib import PurePosixPath

from tasks.layout import ApacheLayout, Layout

P = PurePosixPath


def test_pool_layout_follows_the_host_model():
    lay = Layout(dir=P("/srv/fpm-fleet/www"), pool="www")
    assert lay.release("v1") == P("/srv/fpm-fleet/www/releases/v1")
    assert lay.current_release == P("/srv/fpm-fleet/www/current.release")
    assert lay.current == P("/srv/fpm-fleet/www/current")
    assert lay.sock(2) == P("/srv/fpm-fleet/www/run/www-2.sock")
    assert lay.status_sock(2) == P("/srv/fpm-fleet/www/run/www-2-status.sock")
    assert lay.pid(2) == P("/srv/fpm-fleet/www/run/www-2.pid")
    assert lay.fpm_conf(2) == P("/srv/fpm-fleet/www/conf/www-2.conf")
    assert lay.fpm_log(2) == P("/srv/fpm-fleet/www/log/www-2.log")


def test_every_directory_of_the_model_is_listed_once_pool_dir_first():
    lay = Layout(dir=P("/srv/x/www"), pool="www")
    dirs = lay.directories()
    assert dirs[0] == lay.dir
    assert len(set(dirs)) == len(dirs)
    assert {lay.releases, lay.current, lay.shared, lay.run, lay.log, lay.conf, lay.state,
            lay.incoming} <= set(dirs)
    assert lay.current_release not in dirs  # a symlink, made by activate


def test_layout_of_host_and_pool_uses_the_inventory(inventory_data, build_fleet):
    inventory_data["defaults"]["root"] = "/opt/f"
    inventory_data["pools"]["www"]["root"] = "apps/www"
    fleet = build_fleet(inventory_data)
    lay = Layout.of(fleet.hosts[0], fleet.pools[0])
    assert lay == Layout(dir=P("/opt/f/apps/www"), pool="www")


def test_system_apache_uses_debian_paths():
    apache = ApacheLayout("system", P("/srv/fpm-fleet/apache"))
    assert not apache.is_instance
    assert apache.site == P("/etc/apache2/sites-available/fpm-fleet.conf")
    assert apache.pid_file == P("/var/run/apache2/apache2.pid")
    assert apache.rendered_files() == (apache.site,)


def test_instance_apache_keeps_everything_under_the_host_root(inventory_data, build_fleet):
    inventory_data["defaults"]["root"] = "/srv/h1"
    inventory_data["defaults"]["apache"]["mode"] = "instance"
    apache = ApacheLayout.of(build_fleet(inventory_data).hosts[0])
    assert apache.is_instance
    assert apache.main_config == P("/srv/h1/apache/apache2.conf")
    assert apache.site == P("/srv/h1/apache/sites/fpm-fleet.conf")
    assert apache.pid_file == P("/srv/h1/apache/run/apache2.pid")
    assert apache.log_dir == P("/srv/h1/apache/log")
    assert apache.rendered_files() == (apache.main_config, apache.site)


def test_web_roots_are_the_release_root_without_a_document_root():
    lay = Layout(dir=P("/srv/fpm-fleet/www"), pool="www")
    assert lay.web_root == P("/srv/fpm-fleet/www/current.release")
    assert lay.pinned_web_root == P("/srv/fpm-fleet/www/current")


def test_web_roots_follow_the_pools_document_root(inventory_data, build_fleet):
    inventory_data["pools"]["www"]["document_root"] = "web/public"
    fleet = build_fleet(inventory_data)
    lay = Layout.of(fleet.hosts[0], fleet.pools[0])
    # static files switch with current.release; PHP runs from the replica's pinned current/
    assert lay.web_root == P("/srv/fpm-fleet/www/current.release/web/public")
    assert lay.pinned_web_root == P("/srv/fpm-fleet/www/current/web/public")
