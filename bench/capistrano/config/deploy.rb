# What a Capistrano user of PHP-FPM typically writes: releases/<timestamp> under deploy_to,
# a `current` symlink that the web server's document root goes through, and a reload of
# the PHP-FPM masters (kill -USR2) once the symlink is switched, so that new workers
# forget the old release's realpath and opcache entries.
lock "~> 3.17"

set :application, "www"
set :deploy_to, ENV.fetch("CAP_DEPLOY_TO")
set :source, ENV.fetch("CAP_SOURCE")
set :release_name, ENV.fetch("CAP_RELEASE")
# fpm-fleet's pool shares storage/ between releases; the same here.
set :linked_dirs, %w[storage]
set :keep_releases, 5
# The replicas' systemd units: their MainPID is each PHP-FPM master.
set :fpm_units, ENV.fetch("CAP_FPM_UNITS").split
set :format_options, log_file: ENV.fetch("CAP_LOG", "/dev/null")

namespace :fpm do
  desc "USR2 to every PHP-FPM master: each re-executes itself and starts fresh workers"
  task :reload do
    on roles(:app) do
      pids = capture(:systemctl, "show", "--property=MainPID", "--value",
                     *fetch(:fpm_units)).split - ["0"]
      # A stopped unit reports MainPID 0; `kill -USR2 0` would signal the whole group.
      execute :kill, "-USR2", *pids unless pids.empty?
    end
  end
end

after "deploy:publishing", "fpm:reload"
