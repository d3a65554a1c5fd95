"""Feed HTML made safe: nh3 with an allow-list, tracking pixels out, plain words and bullets kept.

The digest never copies feed markup into a mail. It keeps the words, the bullet points and
one image URL, and the templates render those as escaped text; so nothing a feed sends
(script, style, form, iframe, event handler, javascript: or data: URL) can reach a reader."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

import nh3

from ..db.models import storable

__all__ = [
    "PLACEHOLDER_PREFIX",
    "CleanContent",
    "clean_html",
    "cut_words",
    "is_pixel",
    "is_safe_url",
    "without_placeholders",
]

SUMMARY_WORDS = 60
MAX_BULLETS = 5
BULLET_WORDS = 30

_TAGS = {
    "p",
    "br",
    "ul",
    "ol",
    "li",
    "a",
    "b",
    "strong",
    "i",
    "em",
    "img",
    "div",
    "span",
    "h1",
    "h2",
    "h3",
    "h4",
    "blockquote",
    "figure",
    "figcaption",
}
_ATTRIBUTES = {"a": {"href"}, "img": {"src", "alt", "width", "height", "style"}}
# Dropped with everything inside them, not only the tags.
_DROP_WITH_CONTENT = {
    "script",
    "style",
    "iframe",
    "object",
    "embed",
    "form",
    "noscript",
    "template",
    "svg",
    "math",
    "select",
    "textarea",
    "button",
}
_BLOCKS = {"p", "br", "div", "li", "h1", "h2", "h3", "h4", "blockquote", "figure", "ul", "ol"}
_LABELS = {"tldr", "tl;dr", "tl,dr", "key points", "in brief", "summary"}
# Every per-reader placeholder of a rendered issue starts so (render.Placeholders); feed text
# shaped like one, in any case, is cut out: defence in depth behind each issue's secret names.
PLACEHOLDER_PREFIX = "__NL_"
_PLACEHOLDER_SHAPE = re.compile(re.escape(PLACEHOLDER_PREFIX) + r"\w*", re.I)
PIXEL_MAX = 3  # an image this many pixels wide or high, or fewer, is a tracker, not a picture
_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|opacity\s*:\s*0*(?:\.0*)?\s*(?:;|$)"
    r"|(?:^|;)\s*(?:max-)?(?:width|height)\s*:\s*[0-3](?:\.\d*)?\s*(?:px)?\s*(?:;|$)"
    r"|(?:left|top)\s*:\s*-\d{3,}",
    re.I,
)


@dataclass
class CleanContent:
    text: str = ""
    bullets: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)


def is_safe_url(url: str | None) -> bool:
    return bool(url) and str(url).strip().lower().startswith(("http://", "https://"))


def clean_html(html: str) -> CleanContent:
    """The words, bullets and real (non-pixel) images of a piece of feed HTML, with nothing shaped
    like a placeholder."""
    safe = nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        clean_content_tags=_DROP_WITH_CONTENT,
        url_schemes={"http", "https"},
        link_rel=None,
    )
    reader = _Reader()
    reader.feed(safe)
    reader.close()
    paragraphs = [p for p in reader.paragraphs if p.strip(" :").lower() not in _LABELS]
    text = " ".join(" ".join(paragraphs).split())
    bullets = [cut_words(b, BULLET_WORDS) for b in reader.bullets if b][:MAX_BULLETS]
    return CleanContent(text=text, bullets=bullets, images=reader.images)


def without_placeholders(text: str) -> str:
    """Feed text with nothing shaped like a placeholder left in it. One pass is enough: a cut ends
    before a character that cannot be part of a name, so the text around it never joins into one.
    The storage rule comes first: what it would drop later ("_\x01_NL_...") cannot make a name."""
    return _PLACEHOLDER_SHAPE.sub("", storable(text))


def cut_words(text: str, limit: int = SUMMARY_WORDS) -> str:
    """At most `limit` words, cut on a word boundary, with an ellipsis when cut."""
    words = text.split()
    if len(words) <= limit:
        return " ".join(words)
    return " ".join(words[:limit]).rstrip(",;:.-–—") + "…"


def is_pixel(attrs: dict[str, str]) -> bool:
    """A tracking pixel: at most 3 pixels wide or high, or hidden by its style."""
    for dim in ("width", "height"):
        value = str(attrs.get(dim) or "").strip().lower().removesuffix("px").strip()
        if value.isdigit() and int(value) <= PIXEL_MAX:
            return True
    return bool(_HIDDEN_STYLE.search(str(attrs.get("style") or "")))


class _Reader(HTMLParser):
    """Splits sanitised HTML into paragraph text, list items and image sources."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self.bullets: list[str] = []
        self.images: list[str] = []
        self._current: list[str] = []
        self._in_item = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            values = {k: v or "" for k, v in attrs}
            src = without_placeholders(values.get("src") or "").strip()
            if not is_pixel(values) and is_safe_url(src):
                self.images.append(src)
            return
        if tag in _BLOCKS:
            self._flush()
        if tag == "li":
            self._in_item += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _BLOCKS:
            self._flush()
        if tag == "li" and self._in_item:
            self._in_item -= 1

    def handle_data(self, data: str) -> None:
        self._current.append(data)

    def close(self) -> None:
        super().close()
        self._flush()

    def _flush(self) -> None:
        words = " ".join(without_placeholders("".join(self._current)).split())
        self._current = []
        if not words:
            return
        (self.bullets if self._in_item else self.paragraphs).append(words)
