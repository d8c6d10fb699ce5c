"""known_hosts as OpenSSH writes it, read for paramiko: plain and hashed entries, `@revoked`
(honoured: such a key is refused, even with trust_new_host_keys) and `@cert-authority`
(paramiko cannot check host certificates: refused with a clear message when it is the
entry for the host, ignored otherwise). A line paramiko cannot read is skipped, as OpenSSH
skips it. A new key accepted under trust_new_host_keys is appended to the file, so its
comments and every other line stay as they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
from base64 import b64decode
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry

from fpm_fleet.core.errors import ConfigError


@dataclass(frozen=True)
class Line:
    """One meaningful known_hosts line: an optional marker, host patterns, key type and key."""

    number: int
    marker: str  # "", "@revoked" or "@cert-authority"
    patterns: tuple[str, ...]
    keytype: str
    key: str
    text: str


def parse(text: str) -> list[Line]:
    """The lines that name hosts and a key; comments, blank and malformed lines are left out."""
    out = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        marker = fields.pop(0) if fields[0].startswith("@") else ""
        if len(fields) < 3:
            continue
        out.append(Line(number, marker, tuple(fields[0].split(",")), fields[1], fields[2], raw))
    return out


def host_name(address: str, port: int) -> str:
    """How known_hosts names a host: `addr`, or `[addr]:port` off port 22."""
    return address if port == 22 else f"[{address}]:{port}"


def _hashed_match(pattern: str, name: str) -> bool:
    """`|1|salt|hash`: HMAC-SHA1 of the name keyed with the salt (OpenSSH HashKnownHosts)."""
    parts = pattern.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return False
    try:
        salt, digest = b64decode(parts[2]), b64decode(parts[3])
    except ValueError:
        return False
    return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)


def _wildcard(pattern: str) -> re.Pattern[str]:
    """OpenSSH's patterns: `*` and `?` only (`[` is literal, as in `[addr]:port`)."""
    return re.compile(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."))


def matches(line: Line, name: str) -> bool:
    """OpenSSH pattern rules: wildcards, `!negation` wins, hashed names."""
    hit = False
    for pattern in line.patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        if _hashed_match(body, name) or _wildcard(body).fullmatch(name):
            if negated:
                return False
            hit = True
    return hit


def revoked_keys(lines: Iterable[Line], name: str) -> set[tuple[str, str]]:
    return {(ln.keytype, ln.key) for ln in lines if ln.marker == "@revoked" and matches(ln, name)}


def check_markers(lines: Iterable[Line], name: str, path: str, host: str,
                  known: bool) -> None:
    """Refuse, before connecting, a host that only a certificate authority vouches for (a
    plain key for it, `known`, is used instead), or whose entry has a marker OpenSSH lacks."""
    for ln in lines:
        if not ln.marker or not matches(ln, name):
            continue
        if ln.marker == "@cert-authority" and not known:
            raise ConfigError(f"{host}: {path} line {ln.number}: @cert-authority entry for "
                              f"{name}: fpm-fleet (paramiko) cannot check host certificates; "
                              "add the host's own key to known_hosts")
        if ln.marker not in ("@revoked", "@cert-authority"):
            raise ConfigError(f"{host}: {path} line {ln.number}: unknown marker {ln.marker}")


def load(keys: paramiko.HostKeys, lines: Iterable[Line], revoked: set[tuple[str, str]]) -> None:
    """Add every unmarked entry paramiko can read; a revoked key is never added (OpenSSH
    refuses it even where it is also listed as known)."""
    for ln in lines:
        if ln.marker or (ln.keytype, ln.key) in revoked:
            continue
        with contextlib.suppress(Exception):  # paramiko's errors for a line it cannot read
            entry = HostKeyEntry.from_line(ln.text, ln.number)
            if entry is not None and entry.key is not None:
                for pattern in entry.hostnames:
                    keys.add(pattern, entry.key.get_name(), entry.key)


def append(path: str, name: str, key: paramiko.PKey) -> str:
    """Append `name keytype key` to the file in one write (parallel hosts may append at once);
    the file and its directory are created private if missing. Returns the line."""
    line = f"{name} {key.get_name()} {key.get_base64()}"
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        needs_newline = target.stat().st_size > 0 and not target.read_bytes().endswith(b"\n")
        os.write(fd, (("\n" if needs_newline else "") + line + "\n").encode())
    finally:
        os.close(fd)
    return line


class Policy(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]  # paramiko: no hints
    """For a key known_hosts does not list: refuse a revoked one always; otherwise refuse,
    or with trust_new_host_keys save it to `save_to` and say so."""

    def __init__(self, trust: bool, revoked: set[tuple[str, str]], save_to: str,
                 say: Callable[[str], None]) -> None:
        self.trust, self.revoked, self.save_to, self.say = trust, revoked, save_to, say

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        if (key.get_name(), key.get_base64()) in self.revoked:
            raise paramiko.SSHException(f"host key revoked: {key.get_name()} {key.fingerprint} "
                                        "is marked @revoked in known_hosts; refusing to "
                                        "connect")
        if not self.trust:
            raise paramiko.SSHException(f"Server {hostname!r} not found in known_hosts")
        client.get_host_keys().add(hostname, key.get_name(), key)
        append(self.save_to, hostname, key)
        self.say(f"trusted the new host key of {hostname} ({key.get_name()} {key.fingerprint}) "
                 f"and saved it to {self.save_to}")
