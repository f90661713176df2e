"""pydantic's validation errors, read by their structure rather than their text: where the
error is (a dotted path) and what is wrong, in the validator's own words."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_core import ErrorDetails


def problem(error: ErrorDetails) -> str:
    """What is wrong: a validator's own ``ValueError`` text (pydantic's message would prefix
    it with "Value error, "), else pydantic's message."""
    raised = (error.get("ctx") or {}).get("error")
    if error["type"] == "value_error" and raised is not None:
        return str(raised)
    return error["msg"]


#: The tags pydantic's ``JsonValue`` puts in a location, one per list or object it enters.
_JSON_TAGS = frozenset({"list", "dict", "str", "int", "float", "bool", "none"})
#: The free-form JSON field of a notification, whose locations hold those tags.
_JSON_FIELD = "metadata"


def path(loc: Sequence[int | str], skip: Sequence[str] = ()) -> str:
    """``metadata.links.0``: the location as one dotted path, without ``skip`` (the tags of
    a discriminated union, which are not fields) and without the tags ``JsonValue`` puts
    between the keys of ``metadata`` (``metadata.n.list.1`` is ``metadata.n.1``)."""
    parts = [part for part in loc if part not in skip]
    if _JSON_FIELD in parts:
        # After the field and its key, a tag comes before each further key or index.
        start = parts.index(_JSON_FIELD) + 2
        kept = parts[:start]
        for offset, part in enumerate(parts[start:]):
            if offset % 2 == 0 and part not in _JSON_TAGS:
                kept.extend(parts[start + offset :])  # not a JsonValue's location after all
                break
            if offset % 2 == 1:
                kept.append(part)
        parts = kept
    return ".".join(str(part) for part in parts)


def described(field: str, exc: ValidationError) -> str:
    """Every error of a value validated on its own, as ``field.0.href: Field required``
    (``field`` naming where the value sits), joined by semicolons."""
    return "; ".join(
        f"{path([field, *e['loc']])}: {problem(e)}" for e in exc.errors(include_url=False)
    )


def validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    """pydantic's errors as ``[{"field": "recipient", "message": "..."}]``."""
    return [
        {"field": printable(path(e["loc"]) or "payload"), "message": problem(e)}
        for e in exc.errors(include_url=False)
    ]


def inert(text: str) -> str:
    """``text`` safe to log and to print to a terminal: each line break and control
    character (ESC starts sequences that retitle a window or rewrite what is shown; U+202E
    reverses it) written as its escape (``\\n``, ``\\x1b``); tabs and every printable
    character as they are."""
    return "".join(
        ch if ch.isprintable() or ch == "\t" else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def printable(field: str, limit: int = 200) -> str:
    """A field name safe to log and print: an unknown key sent by a hostile producer may
    hold line breaks (log injection) or be huge."""
    field = inert(field)
    return field if len(field) <= limit else field[: limit - 1] + "…"
