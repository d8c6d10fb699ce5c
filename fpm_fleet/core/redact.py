"""Hook commands as shown to the operator: secrets masked (pure).

The rule (documented in the README): wherever a hook command is shown (progress lines, error
messages, `--dry-run`), these values are replaced by `***`:

- the value of every environment-style assignment `NAME=value` (`APP_KEY=...`,
  `env DB_PASSWORD='...'`), whatever the name;
- the value of an option whose name contains pass, pwd, secret, token, key, auth or cred
  (`--password=...`, `--api-key ...`);
- the password of a URL (`mysql://user:...@db/app`).

The run log (0600) keeps the exact commands. A secret glued to a short option (`-psecret`)
cannot be told from a flag: pass secrets in shared files, not on the command line.
"""

from __future__ import annotations

import re

MASK = "***"
_VALUE = r"(?:\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^\s;&|)'\"]+)"
ASSIGNMENT = re.compile(rf"(?<![\w./-])([A-Za-z_][A-Za-z0-9_]*)=({_VALUE})?")
SECRET_OPTION = re.compile(
    rf"(--?[A-Za-z0-9_-]*(?:pass|pwd|secret|token|key|auth|cred)[A-Za-z0-9_-]*)(=|\s+)({_VALUE})",
    re.IGNORECASE)
URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]+:)([^\s@/'\"]+)(@)")


def redact(command: str) -> str:
    """`command` with the values that may be secrets replaced by ***."""
    text = URL_PASSWORD.sub(rf"\g<1>{MASK}\g<3>", command)
    text = SECRET_OPTION.sub(rf"\g<1>\g<2>{MASK}", text)
    return ASSIGNMENT.sub(rf"\g<1>={MASK}", text)


def url_origin(url: str) -> str:
    """A webhook URL as it may be shown or logged: scheme, host and port only. Its user,
    password, path and query are dropped whole, since services put their secret there
    (`https://hooks.slack.com/services/T0/B0/<token>`, `?token=...`)."""
    scheme, _, rest = url.partition("://")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    host = authority.rpartition("@")[2]
    tail = "/" + MASK if rest[len(authority):] not in ("", "/") else ""
    return f"{scheme}://{host}{tail}"
