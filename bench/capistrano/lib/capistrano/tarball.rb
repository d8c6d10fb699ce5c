# A Capistrano SCM plugin for hosts without git: the release is a directory on the control
# machine (`set :source`), packed here with tar, uploaded and unpacked into the new release
# directory. Packing is part of the deploy, as fpm-fleet's scan of its source is of its own.
require "capistrano/scm/plugin"
require "tmpdir"

module Capistrano
  class SCM
    class Tarball < Capistrano::SCM::Plugin
      def register_hooks
        after "deploy:new_release_path", "tarball:create_release"
        before "deploy:set_current_revision", "tarball:set_current_revision"
      end

      def define_tasks
        namespace :tarball do
          desc "Pack the source, upload it and unpack it into release_path"
          task :create_release do
            name = "#{fetch(:application)}-#{fetch(:release_timestamp)}.tar.gz"
            local = File.join(Dir.tmpdir, name)
            # Files owned by root:root whoever packed them: tar run by root on the host
            # would otherwise give them the packer's uid.
            run_locally do
              execute :tar, "--owner=0", "--group=0", "--numeric-owner", "-czf", local,
                      "-C", fetch(:source), "."
            end
            on release_roles(:all) do
              staged = "#{fetch(:tmp_dir)}/#{name}"
              upload! local, staged
              execute :mkdir, "-p", release_path
              execute :tar, "-xzf", staged, "-C", release_path
              execute :rm, "-f", staged
            end
            File.delete(local)
          end

          # What REVISION and revisions.log record: the release's name.
          task :set_current_revision do
            set :current_revision, fetch(:release_name)
          end
        end
      end
    end
  end
end
