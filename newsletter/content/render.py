"""The Jinja2 environment; renders an issue and inlines its CSS once.

What differs per subscriber (greeting, unsubscribe and preference links) is left as placeholders in the
inlined HTML and the text; `fill` puts the values in, escaped for each part. Each issue's
placeholders carry a random key chosen when it is rendered, after its feeds' text was read,
so no feed can spell them."""

from __future__ import annotations

import html as htmlmod
import logging
import secrets
from dataclasses import dataclass
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from ..config import Settings
from ..links import Links
from .digest import Digest, DigestStory
from .sanitize import PLACEHOLDER_PREFIX

__all__ = [
    "FIXED_PLACEHOLDERS",
    "GREETING",
    "UNSUBSCRIBE_URL",
    "Placeholders",
    "RenderedIssue",
    "environment",
    "fill",
    "issue_context",
    "render_welcome",
    "template_loader",
    "greeting_for",
    "inline_css",
    "render_issue",
]


@dataclass(frozen=True)
class Placeholders:
    """An issue's placeholder names: plain word characters, so premailer, lxml and quoted-printable
    leave them whole. `key` is the issue's random key (issues.placeholder_key); None gives the fixed
    names of the issues stored before each had its own."""

    key: str | None
    greeting: str
    unsubscribe_url: str
    issue_id: str  # an issue rendered before it has its id (render_issue(issue_id=None))
    preferences_url: str  # not in the issues rendered before readers could choose

    @classmethod
    def of(cls, key: str | None) -> Placeholders:
        end = f"_{key}__" if key else "__"
        return cls(
            key,
            greeting=f"{PLACEHOLDER_PREFIX}GREETING{end}",
            unsubscribe_url=f"{PLACEHOLDER_PREFIX}UNSUBSCRIBE_URL{end}",
            issue_id=f"{PLACEHOLDER_PREFIX}ISSUE_ID{end}",
            preferences_url=f"{PLACEHOLDER_PREFIX}PREFERENCES_URL{end}",
        )

    @classmethod
    def new(cls) -> Placeholders:
        return cls.of(secrets.token_hex(16))  # 128 bits: nobody guesses them


FIXED_PLACEHOLDERS = Placeholders.of(None)
GREETING = FIXED_PLACEHOLDERS.greeting
UNSUBSCRIBE_URL = FIXED_PLACEHOLDERS.unsubscribe_url


@dataclass(frozen=True)
class RenderedIssue:
    subject: str
    preheader: str
    html: str  # inlined, with placeholders
    text: str  # with placeholders
    placeholders: Placeholders = FIXED_PLACEHOLDERS

    def for_issue(self, issue_id: int) -> tuple[str, str, str, str]:
        """(subject, preheader, html, text) with the issue's id in place: a string replace, so
        the issue repository calls it while it holds the write lock, after the slow render is done."""
        name = self.placeholders.issue_id
        return (
            self.subject,
            self.preheader,
            self.html.replace(name, str(issue_id)),
            self.text.replace(name, str(issue_id)),
        )


def template_loader(folder: Path) -> jinja2.BaseLoader:
    """The operator's folder first, file by file, then the package's templates (SPEC 10)."""
    return jinja2.ChoiceLoader(
        [jinja2.FileSystemLoader(folder), jinja2.PackageLoader("newsletter", "templates")]
    )


@cache
def environment(folder: Path) -> jinja2.Environment:
    """The mails' environment over `folder` (settings.templates_path) and the package."""
    env = jinja2.Environment(
        loader=template_loader(folder),
        autoescape=jinja2.select_autoescape(["html", "html.j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["wrap"] = _wrap
    return env


def render_issue(
    digest: Digest, settings: Settings, *, issue_id: int | None, subject: str | None = None, intro: str = ""
) -> RenderedIssue:
    """The issue's HTML (CSS inlined) and text with new placeholders; `issue_id` None leaves its
    placeholder in its place. `subject` and `intro` are an editor's (SPEC 9): plain text, escaped
    like a feed's; None is the configured subject."""
    names = Placeholders.new()
    context = issue_context(digest, settings, issue_id=issue_id, names=names, subject=subject, intro=intro)
    html, text = render_mail("digest", settings, context)
    return RenderedIssue(context["subject"], context["preheader"], html=html, text=text, placeholders=names)


def issue_context(
    digest: Digest,
    settings: Settings,
    *,
    issue_id: int | None,
    names: Placeholders,
    subject: str | None = None,
    intro: str = "",
) -> dict[str, Any]:
    """What the issue's templates are given: the names an operator's copy may use."""
    n = settings.newsletter
    links = Links(n.base_url)
    tz = n.tz
    subject = one_line(subject) if subject else render_subject(settings.digest.subject, digest)
    preheader = _preheader(digest)

    def when(story: DigestStory) -> str:
        if story.published_at is None:
            return ""
        local = story.published_at.astimezone(tz)
        return f"{local:%H:%M} {local.tzname()}"

    return {
        "newsletter": n,
        "subject": subject,
        "preheader": preheader,
        "date_label": ("The week to " if digest.weekly else "") + long_date(digest.issue_date),
        "weekly": digest.weekly,
        "lead": digest.lead,
        "sections": digest.sections,
        "story_count": len(digest.stories),
        "when": when,
        "archive_url": links.archived_issue(names.issue_id if issue_id is None else issue_id),
        "signup_url": links.signup(),
        "greeting": names.greeting,
        "intro": intro,
        "unsubscribe_url": names.unsubscribe_url,
        "preferences_url": names.preferences_url,
    }


def render_subject(expression: str, digest: Digest) -> str:
    template = SandboxedEnvironment(autoescape=False).from_string(expression)
    subject = template.render(
        date=("Week to " if digest.weekly else "") + short_date(digest.issue_date),
        weekly=digest.weekly,
        issue_date=digest.issue_date,
        lead=digest.lead,
        stories=digest.stories,
        sections=digest.sections,
    )
    return one_line(subject)


def one_line(text: str) -> str:
    """A subject as a header takes it: one line (no CR or LF can reach the header), 250 at most."""
    return " ".join(text.split())[:250]


def inline_css(html: str) -> str:
    """premailer: every rule that can be inlined goes into style attributes; media queries stay.
    Imported here: premailer (lxml, cssutils) is a tenth of a second that only a build needs,
    and every command starts a process."""
    from premailer import Premailer

    return str(
        Premailer(
            html,
            keep_style_tags=False,
            strip_important=False,
            allow_network=False,
            disable_validation=True,
            cssutils_logging_level=logging.CRITICAL,
            remove_classes=False,
        ).transform()
    )


def fill(
    template: str,
    names: Placeholders,
    *,
    greeting: str,
    unsubscribe_url: str,
    for_html: bool,
    preferences_url: str = "",
) -> str:
    """Put one subscriber's values into rendered HTML or text, escaped for that part."""
    if for_html:
        greeting, unsubscribe_url = htmlmod.escape(greeting), htmlmod.escape(unsubscribe_url)
        preferences_url = htmlmod.escape(preferences_url)
    return (
        template.replace(names.greeting, greeting)
        .replace(names.unsubscribe_url, unsubscribe_url)
        .replace(names.preferences_url, preferences_url)
    )


def greeting_for(name: str | None) -> str:
    first = (name or "").strip().split(" ")[0] if name else ""
    return f"Good morning, {first}." if first else "Good morning."


def short_date(d: date) -> str:
    return f"{d.day} {d:%b %Y}"


def long_date(d: date) -> str:
    return f"{d:%A}, {d.day} {d:%B %Y}"


def _preheader(digest: Digest) -> str:
    others = [s.title for s in digest.stories[1:3]]
    text = digest.lead.title + ("; also: " + "; ".join(others) if others else "")
    return text[:140]


def _wrap(text: str, width: int = 72, indent: str = "") -> str:
    import textwrap

    return textwrap.fill(
        text,
        width=width,
        initial_indent=indent,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )


def render_web(
    body: str,
    placeholder_key: str | None,
    settings: Settings,
    *,
    for_html: bool = True,
    unsubscribe_url: str | None = None,
) -> str:
    """An issue's HTML (or text) as nobody in particular reads it, in the archive, a preview or
    the console: the greeting without a name, and the unsubscribe and preference links pointing
    at the site (or at `unsubscribe_url`), never a subscriber's token. `placeholder_key` is the
    issue's."""
    site = Links(settings.newsletter.base_url).signup()
    return fill(
        body,
        Placeholders.of(placeholder_key),
        greeting=greeting_for(None),
        unsubscribe_url=unsubscribe_url or site,
        preferences_url=site,
        for_html=for_html,
    )


def render_confirmation(settings: Settings, *, confirm_url: str) -> tuple[str, str, str]:
    """(subject, inlined HTML, text) of the double opt-in mail."""
    html, text = render_mail("confirm", settings, confirmation_context(settings, confirm_url=confirm_url))
    return f"Confirm your subscription to {settings.newsletter.name}", html, text


def confirmation_context(settings: Settings, *, confirm_url: str) -> dict[str, Any]:
    n = settings.newsletter
    return {"newsletter": n, "confirm_url": confirm_url, "signup_url": Links(n.base_url).signup()}


def render_welcome(
    settings: Settings, *, preferences_url: str, latest_issue_url: str | None
) -> tuple[str, str, str]:
    """(subject, inlined HTML, text) of the one welcome mail a reader gets on confirming (SPEC 10)."""
    context = welcome_context(settings, preferences_url=preferences_url, latest_issue_url=latest_issue_url)
    html, text = render_mail("welcome", settings, context)
    return f"Welcome to {settings.newsletter.name}", html, text


def welcome_context(
    settings: Settings, *, preferences_url: str, latest_issue_url: str | None
) -> dict[str, Any]:
    n = settings.newsletter
    links = Links(n.base_url)
    return {
        "newsletter": n,
        "preferences_url": preferences_url,
        "archive_url": links.archive(),
        "latest_issue_url": latest_issue_url or "",  # "" before the first issue is sent
        "signup_url": links.signup(),
    }


def render_mail(name: str, settings: Settings, context: dict[str, Any]) -> tuple[str, str]:
    """email/NAME.html.j2 (CSS inlined) and email/NAME.txt.j2 with `context`."""
    env = environment(settings.templates_path)
    html = env.get_template(f"email/{name}.html.j2").render(context)
    text = env.get_template(f"email/{name}.txt.j2").render(context)
    return inline_css(html), text
