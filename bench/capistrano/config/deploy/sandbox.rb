# One host of the local fleet, reached as root with the sandbox's client key; its host key
# must be the one in the sandbox's known_hosts (no trust on first use).
server ENV.fetch("CAP_HOST"), user: "root", roles: %w[app]

set :ssh_options, {
  keys: [ENV.fetch("CAP_SSH_KEY")],
  keys_only: true,
  user_known_hosts_file: ENV.fetch("CAP_KNOWN_HOSTS"),
  verify_host_key: :always,
  timeout: 5,
}
