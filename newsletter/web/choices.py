"""What the public pages read from a request: a form's fields or a JSON object's, and whether the
answer should be JSON. The shape is checked here (text fields; `sections` goes as it came to
subscribers.rules, which checks it with the rest of the reader's choice)."""

from __future__ import annotations

from typing import NamedTuple

from flask import request

__all__ = ["BadBody", "Posted", "posted", "wants_json"]


class BadBody(Exception):
    """A body that is neither a form nor a JSON object of text fields."""


class Posted(NamedTuple):
    fields: dict[str, str]  # the one-valued text fields
    sections: object  # None when not sent; a form's a list of text, JSON's whatever it was


def posted() -> Posted:
    """The request's fields; BadBody for a body of another shape."""
    if request.form:
        sections = request.form.getlist("sections") if "sections" in request.form else None
        return Posted({k: v for k, v in request.form.items() if k != "sections"}, sections)
    if not request.data:
        return Posted({}, None)
    try:
        found = request.get_json(silent=True)
    except RecursionError:  # nested thousands deep: no object of ours
        found = None
    if not isinstance(found, dict) or not all(_is_text(k) for k in found):
        raise BadBody("send a form, or a JSON object")
    sections = found.pop("sections", None)
    if not all(v is None or isinstance(v, str) and _is_text(v) for v in found.values()):
        raise BadBody("send each field but sections as text")
    return Posted({str(k): v or "" for k, v in found.items()}, sections)


def wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return (
        best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]
    )


def _is_text(value: str) -> bool:
    """False for a lone surrogate (JSON's "\\ud800"): no page, header or database can hold it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
