"""pydantic's validation errors, read by their structure rather than their text: where the
error is (a dotted path) and what is wrong, in the validator's own words."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic_core import ErrorDetails


def problem(error: ErrorDetails) -> str:
    """What is wrong: a validator's own ``ValueError`` text (pydantic's message would prefix
    it with "Value error, "), else pydantic's message."""
    raised = (error.get("ctx") or {}).get("error")
    if error["type"] == "value_error" and raised is not None:
        return str(raised)
    return error["msg"]


def path(loc: Sequence[int | str], skip: Sequence[str] = ()) -> str:
    """``metadata.links.0``: the location as one dotted path, without ``skip`` (the tags of
    a discriminated union, which are not fields)."""
    return ".".join(str(part) for part in loc if part not in skip)
