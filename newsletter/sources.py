"""Fetch feeds (httpx, capped in size and time, conditional) and parse them (feedparser).

Returns plain StoryRecords; the caller stores them. A feed that fails is reported in its
FeedResult and never stops the others."""

from __future__ import annotations

import calendar
import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import feedparser
import httpx

from . import __version__
from .config import SourceSettings
from .errors import FeedError
from .sanitize import clean_html, cut_words, is_safe_url
from .store import StoryRecord

__all__ = ["DEFAULT_LIMITS", "FeedResult", "Limits", "fetch_all", "parse_feed", "canonical_link"]

DEFAULT_SECTION = "Top stories"
USER_AGENT = f"newsletter/{__version__} (+daily digest; feed reader)"


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 5 * 1024 * 1024
    connect_seconds: float = 5.0
    read_seconds: float = 10.0
    total_seconds: float = 30.0
    parallel: int = 8


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Conditional:
    etag: str | None = None
    last_modified: str | None = None


@dataclass
class FeedResult:
    source: SourceSettings
    stories: list[StoryRecord] = field(default_factory=list)
    error: str | None = None
    not_modified: bool = False
    etag: str | None = None
    last_modified: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def fetch_all(
    sources: Sequence[SourceSettings],
    *,
    base_dir: Path,
    conditionals: dict[str, Conditional] | None = None,
    now: datetime,
    limits: Limits = DEFAULT_LIMITS,
    on_done: Callable[[FeedResult], None] | None = None,
) -> list[FeedResult]:
    """Fetch and parse every source, in parallel, each failure caught and reported by name."""
    conditionals = conditionals or {}
    timeout = httpx.Timeout(limits.read_seconds, connect=limits.connect_seconds)
    headers = {
        "User-Agent": USER_AGENT,
        "Accept": "application/rss+xml, application/atom+xml, application/xml;q=0.9, */*;q=0.5",
    }
    with httpx.Client(timeout=timeout, headers=headers, follow_redirects=True) as client:

        def one(src: SourceSettings) -> FeedResult:
            result = FeedResult(source=src)
            try:
                if src.is_remote:
                    got = _fetch_http(client, src.url, conditionals.get(src.url), limits)
                    if got is None:
                        result.not_modified = True
                        prior = conditionals.get(src.url) or Conditional()
                        result.etag, result.last_modified = prior.etag, prior.last_modified
                        return result
                    body, result.etag, result.last_modified = got
                else:
                    body = _read_local(base_dir, src.url, limits)
                result.stories = parse_feed(body, src, now=now)
            except FeedError as exc:
                result.error = str(exc)
            return result

        def reported(src: SourceSettings) -> FeedResult:
            result = one(src)
            if on_done:
                on_done(result)
            return result

        with ThreadPoolExecutor(max_workers=max(1, min(limits.parallel, len(sources)))) as pool:
            return list(pool.map(reported, sources))


def _fetch_http(
    client: httpx.Client, url: str, prior: Conditional | None, limits: Limits
) -> tuple[bytes, str | None, str | None] | None:
    """The body, ETag and Last-Modified; None when the server says 304 Not Modified."""
    headers: dict[str, str] = {}
    if prior and prior.etag:
        headers["If-None-Match"] = prior.etag
    if prior and prior.last_modified:
        headers["If-Modified-Since"] = prior.last_modified
    deadline = time.monotonic() + limits.total_seconds
    try:
        with client.stream("GET", url, headers=headers) as response:
            if response.status_code == 304:
                return None
            if response.status_code >= 400:
                raise FeedError(f"the server answered {response.status_code} {response.reason_phrase}")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limits.max_bytes:
                raise FeedError(f"it is larger than {limits.max_bytes // (1024 * 1024)} MB")
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limits.max_bytes:
                    raise FeedError(f"it is larger than {limits.max_bytes // (1024 * 1024)} MB")
                if time.monotonic() > deadline:
                    raise FeedError(f"it took longer than {limits.total_seconds:g} seconds")
                chunks.append(chunk)
            return b"".join(chunks), response.headers.get("ETag"), response.headers.get("Last-Modified")
    except httpx.TimeoutException:
        raise FeedError("it did not answer in time") from None
    except httpx.HTTPError as exc:
        raise FeedError(f"it could not be reached ({type(exc).__name__}: {exc})") from None


def _read_local(base_dir: Path, url: str, limits: Limits) -> bytes:
    path = Path(url.removeprefix("file://")).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    try:
        if path.stat().st_size > limits.max_bytes:
            raise FeedError(f"{path} is larger than {limits.max_bytes // (1024 * 1024)} MB")
        return path.read_bytes()
    except OSError as exc:
        raise FeedError(f"cannot read {path}: {exc.strerror or exc}") from None


def parse_feed(body: bytes, source: SourceSettings, *, now: datetime) -> list[StoryRecord]:
    """Stories of one feed document (RSS 0.9x/1.0/2.0, Atom), newest first as the feed gave them."""
    parsed: Any = feedparser.parse(body, sanitize_html=False, resolve_relative_uris=False)
    entries = parsed.get("entries") or []
    if parsed.get("bozo") and not entries:
        reason = parsed.get("bozo_exception")
        raise FeedError(f"it is not a readable feed ({reason})" if reason else "it is not a readable feed")
    if not parsed.get("version") and not entries:
        raise FeedError("it is not an RSS or Atom feed")
    if source.max_items:
        entries = entries[: source.max_items]
    links = [canonical_link(e.get("link") or "") for e in entries]
    repeated = {link for link in links if link and links.count(link) > 1}
    stories = []
    for entry, link in zip(entries, links, strict=True):
        story = _story(entry, link, source, repeated_link=link in repeated, now=now)
        if story is not None:
            stories.append(story)
    return stories


def _story(
    entry: Any, link: str, source: SourceSettings, *, repeated_link: bool, now: datetime
) -> StoryRecord | None:
    title = " ".join(clean_html(entry.get("title") or "").text.split())
    if not title or not is_safe_url(link):
        return None
    html = ""
    if entry.get("content"):
        html = max((c.get("value") or "" for c in entry["content"]), key=len)
    summary_html = entry.get("summary") or ""
    content = clean_html(html or summary_html)
    if html and summary_html and summary_html != html:
        short = clean_html(summary_html)
        content.text = short.text or content.text
        content.bullets = short.bullets or content.bullets
    categories = [t.get("term") for t in entry.get("tags") or [] if t.get("term")]
    section = source.section or (categories[0].strip() if categories else DEFAULT_SECTION)
    return StoryRecord(
        identity=_identity(entry, link, title, source, repeated_link=repeated_link),
        source=source.name,
        title=title,
        link=link,
        summary=cut_words(content.text),
        bullets=tuple(content.bullets),
        author=(" ".join((entry.get("author") or "").split()) or None),
        image=_image(entry, content.images),
        section=section[:200],
        published_at=_published(entry, now=now),
    )


def _identity(entry: Any, link: str, title: str, source: SourceSettings, *, repeated_link: bool) -> str:
    """guid; else the canonical link; else (or when the feed reuses its links) a hash of title and link."""
    guid = (entry.get("id") or "").strip()
    if guid:
        if guid.startswith(("http://", "https://")):
            return canonical_link(guid)[:512]
        if guid.startswith(("tag:", "urn:")):
            return guid[:512]
        # A bare guid like "42" is unique only within its own feed.
        return f"{source.url}#{guid}"[:512]
    if link and not repeated_link:
        return link[:512]
    digest = hashlib.sha256(f"{title}\n{link}".encode()).hexdigest()
    return f"sha256:{digest}"


def _published(entry: Any, *, now: datetime) -> datetime | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        struct = entry.get(key)
        if struct:
            when = datetime.fromtimestamp(calendar.timegm(struct), tz=UTC)
            return min(when, now)  # a date in the future is a feed's mistake, not a promise
    return None


def _image(entry: Any, inline_images: list[str]) -> str | None:
    candidates: list[str] = []
    for media in entry.get("media_content") or []:
        if media.get("medium") == "image" or (media.get("type") or "").startswith("image/"):
            candidates.append(media.get("url") or "")
    candidates += [m.get("url") or "" for m in entry.get("media_thumbnail") or []]
    for link in entry.get("links") or []:
        if link.get("rel") == "enclosure" and (link.get("type") or "").startswith("image/"):
            candidates.append(link.get("href") or "")
    candidates += inline_images
    return next((c.strip() for c in candidates if is_safe_url(c)), None)


_TRACKING_PARAMS = ("utm_", "mc_", "fbclid", "gclid")


def canonical_link(url: str) -> str:
    """The link without fragment and tracking parameters, with a lower-case scheme and host."""
    url = url.strip()
    if not url:
        return ""
    parts = urlsplit(url)
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not k.lower().startswith(_TRACKING_PARAMS)
    ]
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", urlencode(query), ""))
