"""mra-web's door: which requests the server answers at all (the Host, the Origin, the launch token).

Any page the user visits can send requests to ``http://127.0.0.1:7860``: a form POST, a ``fetch``, a
web socket. And with DNS rebinding (a name of the attacker's that resolves to 127.0.0.1) its own
scripts can read the answers. So every request must pass three checks, in this order:

1. **Host** (421 Misdirected Request): the address the browser thinks it talks to must be one this
   server serves: ``localhost``, ``127.0.0.1``, ``[::1]`` or the ``--host`` given. With ``--host
   0.0.0.0`` (or ``::``) this is any IP address and this machine's own names. A rebinding page
   sends its own name (``Host: attacker.example``) and is refused.
2. **Origin** (403): a web socket, and any request that changes something (POST, DELETE...), that
   comes from a page must come from this server's own page: its ``Origin`` must be
   ``http(s)://`` plus the Host. Browsers always send an ``Origin`` on these requests. Programs
   (curl, httpx, websockets) send none, and they still need the token.
3. **Token** (403): a random token made at each launch (:func:`new_token`), printed in the page's
   address (``/?token=...``) as Jupyter does. A request carries it in the ``token`` query parameter
   or in the cookie that an answer to such a request sets (HttpOnly, SameSite=Strict, one name per port),
   so the page's own requests (``fetch``, the web socket, the video, the download) carry it
   without any code on the page.

The checks are an ASGI middleware (:class:`Guard`) in front of every route; ``/favicon.ico`` is
exempt (browsers ask for it on their own).
"""
from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

TOKEN_PARAM = "token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
EXEMPT_PATHS = ("/favicon.ico",)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def new_token() -> str:
    """A per-launch token (32 random URL-safe characters)."""
    return secrets.token_urlsafe(24)


def cookie_name(port: int) -> str:
    """The token's cookie, one per port (cookies are shared by every port of a host)."""
    return f"mra-web-token-{port}"


def host_name(host_header: str) -> str:
    """``Host`` header -> the bare lower-case name: ``[::1]:7860`` -> ``::1``, ``LocalHost.:80`` -> ``localhost``."""
    h = host_header.strip().lower()
    if h.startswith("["):
        name = h[1:h.find("]")] if "]" in h else ""
    elif h.count(":") == 1:
        name = h.split(":")[0]
    else:
        name = h
    return name.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class Door:
    """What the :class:`Guard` lets in: the Host names (``any_ip``: also every IP address) and the token."""

    token: str
    hosts: "frozenset[str]"
    any_ip: bool

    @classmethod
    def serving(cls, host: str, token: str) -> "Door":
        """The door of a server listening on ``host`` (as given to ``--host``)."""
        bare = host_name(host) if host.startswith("[") else host.strip().lower().rstrip(".")
        names = set(LOOPBACK_NAMES) | {bare}
        wildcard = bare in WILDCARD_HOSTS
        if wildcard:
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        return cls(token=token, hosts=frozenset(n for n in names if n), any_ip=wildcard)

    def host_allowed(self, host_header: "str | None") -> bool:
        name = host_name(host_header or "")
        return bool(name) and (name in self.hosts or (self.any_ip and _is_ip(name)))

    def token_ok(self, given: "str | None") -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())


def _port(scope) -> int:
    """The port this server listens on (scope["server"]), which names the token's cookie."""
    server = scope.get("server") or ("", 0)
    return int(server[1] or 0)


def _same_origin(origin: str, host_header: str) -> bool:
    origin = origin.strip().lower()
    return any(origin == f"{scheme}://{host_header.strip().lower()}" for scheme in ("http", "https"))


class Guard:
    """ASGI middleware: refuses what the :class:`Door` does not let in (see the module's text), and
    sets the token's cookie on an answer to a request that carried the token in its address."""

    def __init__(self, app, door: Door):
        self.app = app
        self.door = door

    def refusal(self, scope, headers: dict) -> "tuple[int, str] | None":
        """(status, message) for a request that is refused; None when it may pass."""
        door = self.door
        host = headers.get("host")
        if not door.host_allowed(host):
            return 421, (f"this server does not answer for the address {(host or '(none)')[:100]!r}; open the address "
                         "mra-web printed when it started (a page of another site cannot use mra-web)")
        origin = headers.get("origin")
        changes = scope["type"] == "websocket" or scope.get("method", "GET") not in SAFE_METHODS
        if changes and origin is not None and not _same_origin(origin, host or ""):
            return 403, (f"requests from the page {origin[:100]!r} are refused; only mra-web's own page may use it "
                         "(open the address mra-web printed when it started)")
        if scope.get("path") in EXEMPT_PATHS:
            return None
        if not (door.token_ok(self._query_token(scope)) or door.token_ok(self._cookie_token(scope, headers))):
            return 403, ("this address needs mra-web's token: open the address mra-web printed when it started "
                         "(it ends in /?token=...)")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refused = self.refusal(scope, headers)
        if refused is not None:
            return await self._refuse(scope, receive, send, *refused)
        if scope["type"] == "http" and self.door.token_ok(self._query_token(scope)):
            send = self._setting_cookie(scope, send)
        return await self.app(scope, receive, send)

    @staticmethod
    def _query_token(scope) -> "str | None":
        values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(TOKEN_PARAM)
        return values[-1] if values else None

    @staticmethod
    def _cookie_token(scope, headers: dict) -> "str | None":
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed Cookie header is no token
            return None
        morsel = jar.get(cookie_name(_port(scope)))
        return morsel.value if morsel is not None else None

    def _setting_cookie(self, scope, send):
        cookie = f"{cookie_name(_port(scope))}={self.door.token}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")

        async def sending(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)
        return sending

    @staticmethod
    async def _refuse(scope, receive, send, status: int, message: str) -> None:
        from starlette.responses import JSONResponse

        response = JSONResponse({"error": f"error: {message}"}, status_code=status)
        if scope["type"] == "http":
            return await response(scope, receive, send)
        if "websocket.http.response" in scope.get("extensions", {}):  # the answer says why
            return await response(scope, receive, send)
        await send({"type": "websocket.close", "code": 1008})  # (a plain 403)
