"""The Host and Origin checks of ``lesiondiff serve``, an ASGI middleware in front of every route.

Why: the page has no login and listens on this machine, yet any web site open in a browser here can reach it. A
cross-site form or fetch carries the other site's Origin; DNS rebinding (the other site's name re-resolved to
127.0.0.1, so that the browser lets that site read the answers) carries the other site's name as Host. Both are
refused with 403 before a route runs or a body is read.

- Host: its name must be one this server is reached by: 127.0.0.1, localhost, ::1, the address it listens on
  and the ``--allow-host`` names. Its port is not checked: an ssh tunnel or port forward changes it, and the
  name is what rebinding changes.
- Origin, when sent (browsers send it with every POST and every cross-site fetch): it must be the page's own
  origin, ``http://`` and the Host's name and port (a page served elsewhere, even on this machine, is another
  site). ``null`` (a sandboxed frame or a file: page) is refused too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketClose

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
HOST = re.compile(r"(?P<name>\[[0-9A-Fa-f:.]+\]|[^\s:/@\[\]]+)(?::(?P<port>\d{1,5}))?")


def host_name(text: str) -> str:
    """A host name as compared: lower case, without IPv6 brackets or a trailing dot."""
    return text.strip().removeprefix("[").removesuffix("]").rstrip(".").lower()


def split_host(value: str) -> tuple[str, int] | None:
    """(name, port) of a Host header's ``name``, ``name:port`` or ``[v6]:port`` (port 80 when none is given);
    None when it is anything else."""
    match = HOST.fullmatch(value)
    return (host_name(match["name"]), int(match["port"] or 80)) if match else None


def answered(allowed: Iterable[str] = ()) -> list[str]:
    """The Host names a server answers: this machine's own and ``allowed``, each once."""
    return list(dict.fromkeys(host_name(h) for h in (*LOCAL_HOSTS, *allowed)))


class HostCheck:
    """Refuse (403, ``{"detail": message}``) a request whose Host is not an ``allowed`` name (beside
    :data:`LOCAL_HOSTS`) or whose Origin is another site."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = answered(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self.refusal(Headers(scope=scope)) if scope["type"] in ("http", "websocket") else None
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":  # the app has none; refused all the same
            await WebSocketClose(1008)(scope, receive, send)
        else:
            await JSONResponse({"detail": refusal}, status_code=403)(scope, receive, send)

    def refusal(self, headers: Headers) -> str | None:
        """Why a request with these headers is refused; None when it is not."""
        host = headers.get("host", "")
        own = split_host(host)
        if own is None or own[0] not in self.allowed:
            names = f"{', '.join(self.allowed[:-1])} or {self.allowed[-1]}"
            return (f"this server answers requests for {names}, not {host!r} (lesiondiff serve --allow-host NAME "
                    "adds a name)")
        origin = headers.get("origin")
        if origin is not None:
            scheme, _, rest = origin.partition("://")
            if scheme != "http" or split_host(rest) != own:
                return f"cross-site request refused (Origin {origin!r})"
        return None
