"""One webhook POST over HTTP(S) with urllib, and what its failures mean: retry or not, and
why, in words without the URL's secrets. notify.py imports it only once a webhook sends, so
a run without webhooks never loads urllib.request and http.client."""

from __future__ import annotations

import base64
import urllib.error
import urllib.parse
import urllib.request

from fpm_fleet.core.redact import MASK


def _request(url: str, data: bytes) -> urllib.request.Request:
    """A POST of `data`; a user and password in the URL become basic auth (urllib would take
    `user:pw@host` for the host's name)."""
    parts = urllib.parse.urlsplit(url)
    headers = {"Content-Type": "application/json", "User-Agent": "fpm-fleet"}
    if parts.username is not None:
        user, password = (urllib.parse.unquote(v or "") for v in (parts.username,
                                                                  parts.password))
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
        url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return urllib.request.Request(url, data=data, method="POST", headers=headers)


def post(url: str, data: bytes, timeout: float) -> None:
    """One POST; any answer but 2xx raises (urllib's errors never carry the URL's path)."""
    request = _request(url, data)
    # the inventory admits http:// and https:// URLs only (no file:, no ftp:)
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        answer.read(65536)


def retryable(exc: Exception) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code == 429 or exc.code >= 500
    return True  # refused, reset, timed out, unreachable: the next try may get through


def why(exc: Exception, url: str, timeout: float) -> str:
    """Why an attempt failed, in words that never hold the URL's secret parts: an error
    from deep in http.client may quote the URL, so its path, query and password are cut."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, TimeoutError) or "timed out" in str(exc):
        return f"no answer within {timeout:g}s"
    text = str(exc.reason if isinstance(exc, urllib.error.URLError) else exc)
    parts = urllib.parse.urlsplit(url)
    for secret in (url, parts.path, parts.query, parts.password):
        if secret and len(secret) > 1:
            text = text.replace(secret, MASK)
    return text or type(exc).__name__
