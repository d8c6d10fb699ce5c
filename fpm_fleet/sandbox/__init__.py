"""The local test fleet: Debian 12 hosts booted with systemd (systemd-nspawn), provisioned
and deployed to as a user would."""
