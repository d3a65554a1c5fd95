"""The templates check (SPEC 10): the mails' templates and the site's pages, the operator's first.

`require_templates` runs when a command that renders starts (build, run, preview, schedule,
serve): a broken override stops it with FILE:LINE: reason before anything is built or sent."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import jinja2
from flask import render_template

from ..config import Settings
from ..content.templates import (
    TemplateProblem,
    check_email,
    overrides,
    packaged_names,
    problems_of,
    stored_names,
)
from ..errors import TemplateError
from ..links import Links
from ..subscribers.rules import Choices

__all__ = ["check_templates", "require_templates"]

# what Flask and Flask-Login put in every page's context besides the view's own names
_PAGE_NAMES = {
    "request",
    "session",
    "g",
    "config",
    "current_user",
    "csrf_token",
    "url_for",
    "get_flashed_messages",
}


@dataclass(frozen=True)
class _SampleIssue:
    id: int
    issue_date: date
    subject: str


@dataclass(frozen=True)
class _SampleReader:
    email: str
    name: str | None
    frequency: str


def page_samples(settings: Settings) -> dict[str, Mapping[str, Any]]:
    """The public pages' contexts as their views give them, over sample data. The console's pages
    are read for the names they use (each against the packaged page's), not rendered."""
    choices = Choices.of(settings)
    return {
        "web/base.html.j2": {},
        "web/archive.html.j2": {"issues": [_SampleIssue(1, date(2026, 11, 25), "25 Nov 2026: Headline 1")]},
        "web/signup.html.j2": {
            "message": None,
            "error": False,
            "form": {},
            "embed_action": Links(settings.newsletter.base_url).subscribe(),
            "choices": choices,
        },
        "web/confirm.html.j2": {"token": "SAMPLE"},
        "web/message.html.j2": {"title": "You're subscribed", "message": "Thanks.", "link": ("/", "Next")},
        "web/unsubscribe.html.j2": {"done": False, "token": "SAMPLE", "email": "reader@example.com"},
        "web/preferences.html.j2": {
            "sub": _SampleReader("reader@example.com", "Ada", "daily"),
            "token": "SAMPLE",
            "choices": choices,
            "weekly_day": settings.digest.weekly_day,
            "taken": choices.sections,
            "subscribed": True,
            "unsubscribe_token": "SAMPLE",
            "error": None,
            "saved": False,
        },
    }


def check_pages(settings: Settings) -> list[TemplateProblem]:
    from . import pages_app

    app = pages_app(settings, secret_key=secrets.token_hex(16))
    env = app.jinja_env
    packaged = jinja2.Environment(loader=jinja2.PackageLoader("newsletter", "templates"))
    samples = page_samples(settings)
    names = sorted({n for n in packaged_names() + overrides(settings.templates_path) if n.startswith("web/")})
    everything = _PAGE_NAMES | stored_names(env, names) | set().union(*(set(c) for c in samples.values()))
    found: list[TemplateProblem] = []
    with app.test_request_context("/"):
        for name in names:
            context = samples.get(name)
            if context is not None:
                found += problems_of(
                    env, name, known=set(context) | _PAGE_NAMES, sample=context, render=_page
                )
            else:
                found += problems_of(env, name, known=_names_of(packaged, name) or everything, sample=None)
    return found


def _page(template: jinja2.Template, context: Mapping[str, Any]) -> str:
    return render_template(template, **context)


def _names_of(env: jinja2.Environment, name: str) -> set[str]:
    """The names the packaged page of that name reads, and the page's own: its view gives them."""
    try:
        source, _, _ = env.loader.get_source(env, name)  # type: ignore[union-attr]
    except jinja2.TemplateNotFound:
        return set()
    from jinja2 import meta

    return _PAGE_NAMES | meta.find_undeclared_variables(env.parse(source))


def check_templates(settings: Settings) -> list[TemplateProblem]:
    """Every template, the operator's first, rendered with the sample data: each problem found."""
    return list(dict.fromkeys(check_email(settings) + check_pages(settings)))  # a partial's once


def require_templates(settings: Settings) -> None:
    """Stop (TemplateError, exit 2) when an override is broken; nothing to do without overrides
    (the packaged templates are checked by the tests)."""
    if not overrides(settings.templates_path):
        return
    problems = check_templates(settings)
    if problems:
        raise TemplateError("\n".join(str(p) for p in problems))
