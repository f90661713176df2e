"""Request paths as they may be logged: a key in one (a ping URL's, the Medic-style API's)
and any API token kept to its last four characters, however the path is spelled."""

from __future__ import annotations

import re
import string

from starlette.requests import Request

from config.api_tokens import TOKEN_PREFIX
from worker.validation import inert

#: A key in a path: the segment after ``ping`` or ``medic``, as the routes read it, and as
#: a client may mistype it (``//ping/KEY``, a base URL with a trailing slash; ``/PING/``):
#: those reach no route, but the access log still writes the path. A slash written
#: ``%2F`` before the key separates it too: the server decodes it before routing
#: (``/ping%2FUUID`` is answered as ``/ping/UUID``), while the log writes it as sent.
KEY_IN_PATH = re.compile(r"((?:/|%2F)+(?:ping|medic)(?:/|%2F)+)([^/?#]+)", re.IGNORECASE)
#: A token as ``gds-notify api token`` makes them, wherever else it stands in a path.
TOKEN = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{4,}")


#: What a key or token may be written with (RFC 3986's unreserved characters).
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _unreserved(match: re.Match[str]) -> str:
    ch = chr(int(match.group(1), 16))
    return ch if ch in _UNRESERVED else match.group(0)


def masked(path: str) -> str:
    """``path`` with each key in it cut to its last four characters (``…abcd``), however
    it was percent-encoded (``gdsn%5F…`` is a token too); any other escape stays as it was
    sent."""
    if "%" in path:
        # Only what a key may be written with is decoded: %2F stays a character of the
        # segment it is in (decoded, it would end the segment, and the mask with it).
        path = _ESCAPE.sub(_unreserved, path)
    path = KEY_IN_PATH.sub(lambda m: m.group(1) + "…" + m.group(2)[-4:], path)
    return TOKEN.sub(lambda m: "…" + m.group(0)[-4:], path)


def shown(request: Request) -> str:
    """The request's path for a log line of ours: as sent (what the access log writes, so
    the two can be matched), keys masked. Decoded, it could carry control characters into
    the log (an ESC sequence clears an operator's terminal)."""
    # ASGI servers may give no raw path (None): then the decoded one, made inert below.
    sent = (request.scope.get("raw_path") or b"").decode("latin-1") or request.url.path
    return inert(masked(sent))
