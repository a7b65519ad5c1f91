"""The host/token rule shared by the two servers, the dashboard and the inference server.

It sits below both stages (neither may import the other).

Loopback hosts need no token. Any other host gets the given ``--token`` or a generated
one, and then every API call must carry it (``Authorization: Bearer T`` or ``?token=T``).
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Access:
    """How a server started on a host is reached (:func:`access_rule`).

    Attributes:
        token: what every API call must carry, or None (loopback, no token given).
        generated: the token was generated here (the server prints it).
        loopback_only: no token, so only requests addressed to a loopback ``Host`` are
            answered (the DNS-rebinding guard).
    """

    token: str | None
    generated: bool
    loopback_only: bool


def access_rule(host: str, token: str | None, *, generate: bool = True) -> Access:
    """The host/token rule, applied in this one place for both servers and their CLIs.

    Args:
        host: the interface the server binds.
        token: the ``--token`` given, or None.
        generate: make up a token for a non-loopback host without one (the CLIs); False
            refuses instead (a library caller must choose its token).

    Raises:
        DataloupeError: a token shorter than :data:`MIN_TOKEN_CHARS`, or (``generate=False``)
            a non-loopback host without a token.

    Example:
        >>> access_rule("127.0.0.1", None)
        Access(token=None, generated=False, loopback_only=True)
    """
    from dataloupe.project import DataloupeError  # noqa: PLC0415

    if not generate and not token and not is_loopback(host):
        raise DataloupeError(f"refusing to serve on {host} without a token (see resolve_token)")
    try:
        token, generated = resolve_token(host, token or None)
    except ValueError as e:
        raise DataloupeError(str(e)) from None
    return Access(token, generated, loopback_only=token is None)


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


def host_refusal(host: str) -> tuple[int, dict]:
    """The one answer both servers give a request whose ``Host`` is not allowed: 403 and a
    body that carries the reason under ``error`` (the dashboard's key) and ``detail`` (FastAPI's)."""
    msg = (f"host {host!r} not allowed: this server answers only requests addressed to a loopback host"
           " (start it with --token to accept others)")
    return 403, {"error": msg, "detail": msg}


class BodyLimit:
    """ASGI middleware: a request body larger than ``max_bytes`` gets 413 before it is buffered.

    ``Content-Length`` is checked first; a body without one (chunked) is read here up to
    the limit and then handed on, so memory never holds more than ``max_bytes`` of it.
    ``error(message)`` builds the response (each server keeps its own JSON shape).
    """

    def __init__(self, app, *, max_bytes: int, error):
        self.app, self.max_bytes, self.error = app, max_bytes, error

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        msg = f"request body too large: limit is {self.max_bytes} bytes"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                return await self.error(msg)(scope, receive, send)
            return await self.app(scope, receive, send)
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                return await self.error(msg)(scope, receive, send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def check_port_free(host: str, port: int) -> None:
    """Raise ``DataloupeError`` (one line) when ``host:port`` cannot be bound, e.g. another
    program listens there; checked before a server prints its address."""
    import errno
    import socket

    from dataloupe.project import DataloupeError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise DataloupeError(f"cannot use host {host!r}: {e.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise DataloupeError(f"port {port} on {host} is already in use by another program;"
                                     " pick another --port") from None
            raise DataloupeError(f"cannot listen on {host}:{port}: {e.strerror}") from None
