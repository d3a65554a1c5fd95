"""GET /archive, GET /archive.atom (its feed), GET /archive/ID (the web version, with no
subscriber's token), GET /healthz. Only issues on their way to readers are shown: not one merely
built, nor one paused."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import urlsplit
from xml.etree import ElementTree

from flask import Blueprint, Response, abort, jsonify, make_response, render_template

from ..config import Settings
from ..content.render import render_web
from ..db.models import Issue, Story
from ..links import Links
from . import services

FEED_ENTRIES = 20
ATOM = "http://www.w3.org/2005/Atom"
# what XML 1.0 cannot carry at all, escaped or not: a feed's title with one would break the document
ElementTree.register_namespace("", ATOM)
NO_ISSUE_YET = datetime(2000, 1, 1, tzinfo=UTC)  # an Atom feed has an `updated` even when empty
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

bp = Blueprint("archive", __name__)


@bp.get("/archive")
def index() -> str:
    return render_template("web/archive.html.j2", issues=services().store.archived_issues(limit=365))


@bp.get("/archive.atom")
def feed() -> Response:
    """The archive as Atom 1.0: the newest issues, each with its stories as escaped HTML."""
    svc = services()
    issues = svc.store.archived_issues(limit=FEED_ENTRIES)
    body = atom_feed(svc.settings, [(issue, svc.store.issue_items(issue)) for issue in issues])
    response = make_response(body)
    response.content_type = "application/atom+xml; charset=utf-8"
    return response


def atom_feed(settings: Settings, issues: Sequence[tuple[Issue, list[list[Story]]]]) -> bytes:
    n = settings.newsletter
    links = Links(n.base_url)
    host = urlsplit(n.base_url).hostname or "localhost"
    root = ElementTree.Element(f"{{{ATOM}}}feed")
    _add(root, "title", n.name)
    _add(root, "id", links.archive())
    _add(root, "link", rel="self", href=f"{links.archive()}.atom")
    _add(root, "link", rel="alternate", type="text/html", href=links.archive())
    author = _add(root, "author")
    _add(author, "name", n.name)
    _add(
        root,
        "updated",
        _stamp(max((_updated(i) for i, _ in issues), default=NO_ISSUE_YET)),
    )
    for issue, items in issues:
        entry = _add(root, "entry")
        _add(entry, "title", issue.subject)
        # a tag URI: the same entry whatever the order, the page or the feed's address says
        _add(entry, "id", f"tag:{host},{issue.issue_date.isoformat()}:issue/{issue.id}")
        _add(entry, "link", rel="alternate", type="text/html", href=links.archived_issue(issue.id))
        _add(entry, "updated", _stamp(_updated(issue)))
        _add(entry, "published", _stamp(_updated(issue)))
        _add(entry, "content", _stories_html(items), type="html")
    document: bytes = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
    return document


def _add(parent: ElementTree.Element, tag: str, text: str | None = None, **attrs: str) -> ElementTree.Element:
    element = ElementTree.SubElement(
        parent, f"{{{ATOM}}}{tag}", {k: _NOT_XML.sub("", v) for k, v in attrs.items()}
    )
    if text is not None:
        element.text = _NOT_XML.sub("", text)  # ElementTree escapes <, & and > itself
    return element


def _updated(issue: Issue) -> datetime:
    return issue.sent_at or issue.created_at


def _stamp(when: datetime) -> str:
    return when.isoformat(timespec="seconds")


def _stories_html(items: list[list[Story]]) -> str:
    """Each item's face story: its title linked, its summary or points; feeds' words escaped."""
    e = html.escape
    parts = []
    for story, *also in items:
        parts.append(f'<h3><a href="{e(story.link)}">{e(story.title)}</a></h3>')
        if story.bullets:
            parts.append("<ul>" + "".join(f"<li>{e(b)}</li>" for b in story.bullets) + "</ul>")
        elif story.summary:
            parts.append(f"<p>{e(story.summary)}</p>")
        if also:
            others = ", ".join(f'<a href="{e(s.link)}">{e(s.source)}</a>' for s in also)
            parts.append(f"<p>Also covered by {others}</p>")
    return "\n".join(parts)


@bp.get("/archive/<int:issue_id>")
def issue(issue_id: int) -> Response:
    svc = services()
    found = svc.store.archived_issue(issue_id)
    if found is None:
        abort(404)
    return make_response(render_web(found.html, found.placeholder_key, svc.settings))


@bp.get("/healthz")
def health() -> Response:
    ok = services().store.ping()
    response = jsonify(
        {"status": "ok"} if ok else {"status": "unavailable", "reason": "database unreachable"}
    )
    response.status_code = 200 if ok else 503
    return response
