"""The host/token rule shared by the two servers, the dashboard and the inference server.

It sits below both stages (neither may import the other).

Loopback hosts need no token. Any other host gets the given ``--token`` or a generated
one, and then every API call must carry it (``Authorization: Bearer T`` or ``?token=T``).
"""

from __future__ import annotations

import ipaddress
import secrets

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
MIN_TOKEN_CHARS = 8  # same rule as the dashboard


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; False for 0.0.0.0, :: and everything else."""
    h = host.strip().strip("[]").lower()
    if h in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, token: str | None) -> tuple[str | None, bool]:
    """Apply the rule: returns ``(token or None, generated)``.

    Example:
        >>> resolve_token("127.0.0.1", None)
        (None, False)
        >>> resolve_token("0.0.0.0", "s3cret-token")
        ('s3cret-token', False)
    """
    if token is not None and len(token.strip()) < MIN_TOKEN_CHARS:
        raise ValueError(f"--token must be at least {MIN_TOKEN_CHARS} characters")
    if token:
        return token, False
    if is_loopback(host):
        return None, False
    return secrets.token_urlsafe(24), True


def host_of(host_header: str | None) -> str:
    """The host name of a ``Host`` header, without port or IPv6 brackets ("" when absent)."""
    h = (host_header or "").strip()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h[1:]
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def host_header_is_loopback(host_header: str | None) -> bool:
    """True when a request's ``Host`` header names a loopback host (port ignored).

    A loopback server without a token accepts only these, so a web page on another
    origin cannot reach it through DNS rebinding.
    """
    return bool(host_header) and is_loopback(host_of(host_header))


def token_matches(expected: str, authorization: str | None, query_token: str | None) -> bool:
    """Check a request's ``Authorization: Bearer`` header or ``?token=`` in constant time."""
    given = None
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
    if given is None:
        given = query_token
    return given is not None and secrets.compare_digest(given.encode(), expected.encode())
