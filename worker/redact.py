"""How secrets are shown when they must be shown at all: by their last four characters."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr


def mask(secret: str | SecretStr | None) -> str:
    """``'…a1b2'`` for a routing key or password; ``'<unset>'`` for none.

    Short secrets are shown as stars only, so masking never reveals most of a secret.
    """
    if secret is None:
        return "<unset>"
    raw = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if len(raw) < 12:
        return "****"
    return "…" + raw[-4:]


def url_shown(url: str) -> str:
    """``url`` without the user and password it may carry (``https://user:pw@host/...``,
    a proxy's basic auth), safe to print."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="…@" + parts.netloc.rsplit("@", 1)[-1]))
