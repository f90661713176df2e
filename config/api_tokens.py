"""Who may call the HTTP API: named bearer tokens, each with scopes, stored as hashes.

``API_TOKENS`` (a JSON list) and/or ``API_TOKENS_FILE`` (a file holding the same list)::

    [{"name": "alertmanager", "sha256": "5e88...", "scopes": ["notify"]},
     {"name": "ops", "sha256": "9f86...", "scopes": ["admin"]}]

Only the SHA-256 of each token is configured, never the token: ``gds-notify api token
NAME --scope notify`` makes a new one and prints both. A token is 32 random bytes, so a
plain hash is enough (there is nothing to guess from it); checking one compares against
every configured hash in constant time.

Scopes: ``notify`` (send notifications, acknowledge and resolve incidents, read jobs),
``ping`` (report heartbeats, nothing else: the key for crontab lines and scripts, which
end up in shell histories and CI logs), ``heartbeat`` (report heartbeats, and read and
manage monitored services: register, mute, deactivate), ``admin`` (everything, dead
letters included). A ``ping`` or ``heartbeat`` token is also a ping key: it may stand in
the path of a Healthchecks-style ping URL or of the Medic-style API. ``team`` limits a
token to the services of one team.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from worker.exceptions import NotificationConfigError
from worker.validation import path, problem

Scope = Literal["notify", "ping", "heartbeat", "admin"]
SCOPES: tuple[Scope, ...] = ("notify", "ping", "heartbeat", "admin")

#: What every token starts with: a scanner for leaked secrets can look for it.
TOKEN_PREFIX = "gdsn_"  # noqa: S105 - a prefix, not a secret


class ApiToken(BaseModel):
    """One configured token: a name for logs, the hash of its secret, and its scopes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", repr=False)
    scopes: tuple[Scope, ...] = Field(min_length=1)
    team: str | None = Field(default=None, min_length=1, max_length=255)

    @field_validator("sha256", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _team_limits_heartbeats_only(self) -> ApiToken:
        if self.team is not None and not set(self.scopes) <= {"ping", "heartbeat"}:
            # A notify or admin token acts for every team: the entry would promise a limit
            # the API does not keep (as `gds-notify api token --team` refuses to make one).
            raise ValueError(
                "a team limits a token to one team's heartbeat services: give it to a token "
                "whose scopes are ping or heartbeat alone"
            )
        return self

    def allows(self, scope: Scope) -> bool:
        if "admin" in self.scopes or scope in self.scopes:
            return True
        return scope == "ping" and "heartbeat" in self.scopes  # managing includes reporting

    def covers(self, team: str) -> bool:
        """Whether this token may act on a service of ``team``."""
        return self.team is None or self.team.strip().lower() == team.strip().lower()


_TOKEN_LIST = TypeAdapter(list[ApiToken])


def new_token() -> str:
    """A new token secret (shown once, to whoever creates it)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_tokens(text: str, origin: str) -> list[ApiToken]:
    """Tokens from their JSON list; NotificationConfigError naming the entry and field."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise NotificationConfigError(f"{origin}: not valid JSON: {exc}") from None
    try:
        tokens = _TOKEN_LIST.validate_python(data)
    except ValidationError as exc:
        found = "; ".join(f"{path(e['loc']) or 'list'}: {problem(e)}" for e in exc.errors())
        raise NotificationConfigError(f"{origin}: {found}") from None
    names = [t.name for t in tokens]
    if len(set(names)) != len(names):
        raise NotificationConfigError(f"{origin}: token names must be unique")
    return tokens


def load_tokens(inline: str | None, file: Path | None) -> list[ApiToken]:
    """Every configured token: ``API_TOKENS`` and the tokens in ``API_TOKENS_FILE``."""
    tokens = parse_tokens(inline, "API_TOKENS") if inline else []
    if file is not None:
        origin = f"API_TOKENS_FILE {file}"
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise NotificationConfigError(f"{origin}: cannot be read: {exc.strerror}") from None
        tokens += parse_tokens(text, origin)
    names = [t.name for t in tokens]
    if len(set(names)) != len(names):
        raise NotificationConfigError("API_TOKENS and API_TOKENS_FILE name a token twice")
    return tokens


def find_token(tokens: list[ApiToken], secret: str) -> ApiToken | None:
    """The token whose hash matches ``secret``. Every hash is compared, each in constant
    time, so the answer takes as long whichever token (if any) matched."""
    presented = token_hash(secret)
    found = None
    for token in tokens:
        if hmac.compare_digest(presented, token.sha256):
            found = token
    return found
