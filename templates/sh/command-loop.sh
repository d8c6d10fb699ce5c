# shellcheck shell=sh
# The host shell (fpm_fleet/remote/hostshell.py): one SSH channel of a connection runs this
# loop, and the connection's commands go through it, each as it would in a channel of its
# own: `timeout -k KILL SECONDS sh -c TEXT`, with an empty stdin. A channel of its own costs
# the host an sshd session process and a login shell for every command.
# Protocol: the first line is a token the client drew for this channel (it is never in a
# process's arguments, so no command prints it by listing processes). Then per command a
# line "BYTES SECONDS KILL" and BYTES of command text. Once the command exits, the loop
# writes "TOKEN STATUS" on stdout and "TOKEN" on stderr: everything before them is the
# command's output.
IFS= read -r token || exit 0
while IFS=' ' read -r bytes seconds kill; do
  # the command's text, trailing newlines kept (a command substitution strips them)
  text=$(head -c "$bytes"; echo .)
  text=${text%.}
  timeout -k "$kill" "$seconds" sh -c "$text" </dev/null
  status=$?
  printf '%s %s\n' "$token" "$status"
  printf '%s\n' "$token" >&2
done
