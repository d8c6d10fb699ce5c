"""fpm_fleet.host.layout: where a pool's files live on a host (ARCHITECTURE.md, "Host model")."""

from __future__ import annotations

from pathlib import PurePosixPath

from fpm_fleet.host.layout import APACHE_SITE, Layout
from fpm_fleet.render import apache_files

P = PurePosixPath


def test_pool_layout_follows_the_host_model():
    lay = Layout(dir=P("/srv/fpm-fleet/www"), pool="www")
    assert lay.release("v1") == P("/srv/fpm-fleet/www/releases/v1")
    assert lay.current_release == P("/srv/fpm-fleet/www/current.release")
    assert lay.current == P("/srv/fpm-fleet/www/current")
    assert lay.previous_release == P("/srv/fpm-fleet/www/previous.release")
    assert lay.sock(2) == P("/srv/fpm-fleet/www/run/www-2.sock")
    assert lay.status_sock(2) == P("/srv/fpm-fleet/www/run/www-2-status.sock")
    assert lay.pid(2) == P("/srv/fpm-fleet/www/run/www-2.pid")
    assert lay.fpm_conf(2) == P("/srv/fpm-fleet/www/conf/www-2.conf")


def test_each_replica_is_an_instance_of_the_pools_template_unit():
    lay = Layout(dir=P("/srv/fpm-fleet/www"), pool="www")
    assert lay.unit(2) == "fpm-fleet-www@2.service"
    assert lay.unit_file == P("/etc/systemd/system/fpm-fleet-www@.service")
    # the unit name holds the pool, never the pool's directory
    assert Layout(dir=P("/opt/other/www"), pool="www").unit_file == lay.unit_file


def test_every_directory_of_the_model_is_listed_once_pool_dir_first():
    lay = Layout(dir=P("/srv/x/www"), pool="www")
    dirs = lay.directories()
    assert dirs[0] == lay.dir
    assert len(set(dirs)) == len(dirs)
    assert {lay.releases, lay.current, lay.shared, lay.run, lay.log, lay.conf, lay.state,
            lay.incoming} <= set(dirs)
    # symlinks, made by activate
    assert lay.current_release not in dirs and lay.previous_release not in dirs


def test_static_files_come_from_the_active_release_then_the_previous_one():
    lay = Layout(dir=P("/srv/fpm-fleet/app"), pool="app", document_root="public")
    assert lay.web_root == P("/srv/fpm-fleet/app/current.release/public")
    assert lay.fallback_web_root == P("/srv/fpm-fleet/app/previous.release/public")
    assert Layout(dir=P("/srv/x"), pool="x").fallback_web_root == P("/srv/x/previous.release")


def test_layout_of_host_and_pool_uses_the_inventory(inventory_data, build_fleet):
    inventory_data["defaults"]["root"] = "/opt/f"
    inventory_data["pools"]["www"]["root"] = "apps/www"
    fleet = build_fleet(inventory_data)
    lay = Layout.of(fleet.hosts[0], fleet.pools[0])
    assert lay == Layout(dir=P("/opt/f/apps/www"), pool="www")


def test_apache_site_goes_into_debians_sites_available():
    assert P("/etc/apache2/sites-available/fpm-fleet.conf") == APACHE_SITE


def test_apache_site_path_does_not_follow_the_host_root(inventory_data, build_fleet):
    # one system Apache per host: the host root holds pools, never Apache's files
    inventory_data["defaults"]["root"] = "/srv/h1"
    fleet = build_fleet(inventory_data)
    [site] = apache_files(fleet, fleet.hosts[0])
    assert site.path == P("/etc/apache2/sites-available/fpm-fleet.conf")


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
