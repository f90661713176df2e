"""Where Redis is: ``REDIS_URL`` read once into what every client needs.

Two forms:

- one server: ``redis://[[user]:password@]host:port/db``, ``rediss://`` for TLS, or
  ``unix:///path/redis.sock`` (redis-py's own URL forms);
- Sentinel: ``redis+sentinel://[[user]:password@]host:port,host:port,.../MASTER[/db]``
  (``rediss+sentinel://`` for TLS to the master and the Sentinels). The hosts are the
  Sentinels (port 26379 when none is given), ``MASTER`` the name they monitor; the
  password is the master's, the Sentinels' own is ``REDIS_SENTINEL_PASSWORD``. Query
  parameters (``ssl_ca_certs=...``) apply as for one server.

Every user of Redis — job state, the broker, the API, beat, Flower, the CLI — builds its
client from a :class:`RedisAddress`, so all of them follow the master the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
DIRECT_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_PORT = 26379
SENTINEL_FORM = "redis+sentinel://HOST:26379,HOST:26379,HOST:26379/MASTER_NAME/0"


@dataclass(frozen=True)
class RedisAddress:
    """A parsed ``REDIS_URL``."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = ""  # with Sentinels only
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    options: dict[str, str] = field(default_factory=dict)

    @property
    def sentinel(self) -> bool:
        return bool(self.sentinels)

    @property
    def unix(self) -> bool:
        """A server reached through its socket file (``unix://``)."""
        return self.url.startswith("unix:")

    def shown(self) -> str:
        """The address without credentials, safe to print; ``…@`` where it holds some, so a
        reader can see a password was given."""
        if not self.sentinel:
            parts = urlsplit(self.url)
            credentials, at, host = parts.netloc.rpartition("@")
            given = "…@" if at and credentials else ""
            return f"{parts.scheme}://{given}{host}{parts.path}"
        hosts = ",".join(host_port(h, p) for h, p in self.sentinels)
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        return f"{scheme}://{hosts}/{self.master_name}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """``url`` as a :class:`RedisAddress`; ValueError saying what a valid one looks like."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL": a bracket left open
        raise ValueError(f"is not a URL ({exc}): write an IPv6 host as [::1]:6379") from None
    scheme = parts.scheme
    if scheme == "sentinel":
        raise ValueError(
            f"Sentinel URLs are written {SENTINEL_FORM} (kombu's sentinel://...;sentinel://... "
            "form is not accepted; see README, Operations)"
        )
    if scheme != "unix" and (
        "@" in parts.path or "@" in parts.fragment or (not parts.hostname and "@" in parts.query)
    ):
        # A '/', '?' or '#' in the password ended the host part early: read so, the URL
        # would name another host, and print part of the password as its path.
        raise ValueError(
            "holds '@' after its host: percent-encode a '/', '?' or '#' in the password "
            "(%2F, %3F, %23)"
        )
    if scheme in DIRECT_SCHEMES:
        if scheme != "unix":
            try:
                port = parts.port  # urllib checks the port only when it is read
            except ValueError:
                port = 0
            if port is not None and not 1 <= port <= 65535:
                raise ValueError(
                    f"has a port that is not a number from 1 to 65535 ({scheme}://HOST:PORT/DB)"
                )
        return RedisAddress(url=url, tls=scheme == "rediss")
    if scheme not in SENTINEL_SCHEMES:
        raise ValueError(
            f"must be a redis://, rediss:// or unix:// URL, or a Sentinel URL ({SENTINEL_FORM})"
        )
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    sentinels = tuple(_host(h) for h in hosts.split(",") if h)
    path = [p for p in parts.path.split("/") if p]
    if not sentinels or not path:
        raise ValueError(f"a Sentinel URL names the Sentinels and the master: {SENTINEL_FORM}")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(
            f"after the master's name only a database number may follow: {SENTINEL_FORM}"
        )
    return RedisAddress(
        url=url,
        sentinels=sentinels,
        master_name=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
        tls=SENTINEL_SCHEMES[scheme],
        options=dict(parse_qsl(parts.query)),
    )


def _host(text: str) -> tuple[str, int]:
    if text.startswith("["):  # an IPv6 address, bracketed as in any URL: [::1]:26379
        host, bracket, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not a Sentinel's host:port")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError(f"{text!r} is not a Sentinel's host:port")
    if port and not port.isdigit():
        raise ValueError(f"{text!r} is not a Sentinel's host:port")
    return host, int(port) if port else SENTINEL_PORT


def host_port(host: str, port: int) -> str:
    """``host:port`` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
