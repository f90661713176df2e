"""Request paths as they may be logged: a key in one (a ping URL's, the Medic-style API's)
and any API token kept to its last four characters, however the path is spelled."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from config.api_tokens import TOKEN_PREFIX

#: A key in a path: the segment after ``ping`` or ``medic``, as the routes read it, and as
#: a client may mistype it (``//ping/KEY``, a base URL with a trailing slash; ``/PING/``):
#: those reach no route, but the access log still writes the path.
KEY_IN_PATH = re.compile(r"(/+(?:ping|medic)/+)([^/?#]+)", re.IGNORECASE)
#: A token as ``gds-notify api token`` makes them, wherever else it stands in a path.
TOKEN = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{4,}")


def masked(path: str) -> str:
    """``path`` with each key in it cut to its last four characters (``…abcd``), however
    it was percent-encoded (``gdsn%5F…`` is a token too); what was encoded and cannot be
    logged as it is (a line break, a space, ``%``) stays encoded."""
    if "%" in path:
        path = "".join(
            ch if ch.isprintable() and not ch.isspace() and ch != "%" else quote(ch)
            for ch in unquote(path)
        )
    path = KEY_IN_PATH.sub(lambda m: m.group(1) + "…" + m.group(2)[-4:], path)
    return TOKEN.sub(lambda m: "…" + m.group(0)[-4:], path)
