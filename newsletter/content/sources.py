"""Fetch feeds (httpx, capped in size and time, conditional) and parse them (feedparser).

Returns plain StoryRecords; the caller stores them. A feed that fails is reported in its
FeedResult and never stops the others."""

from __future__ import annotations

import calendar
import hashlib
import heapq
import logging
import re
import socket
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import feedparser
import httpx

from .. import __version__
from ..config import SourceSettings
from ..db import widths
from ..errors import FeedError
from .records import FetchedStory
from .sanitize import clean_html, cut_words, is_pixel, is_safe_url, without_placeholders

__all__ = [
    "DEFAULT_LIMITS",
    "FeedResult",
    "FetchedStory",
    "Limits",
    "canonical_link",
    "fetch_all",
    "parse_feed",
]

log = logging.getLogger(__name__)

DEFAULT_SECTION = "Top stories"
# A date this far ahead of the fetch is a server clock running fast: the story is dated now. A
# date further ahead is no date (digest.py: it never wins a place by looking newest).
CLOCK_SKEW = timedelta(minutes=15)
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
    stories: list[FetchedStory] = field(default_factory=list)
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

    def one(src: SourceSettings) -> FeedResult:
        result = FeedResult(source=src)
        try:
            if src.is_remote:
                got = _fetch_http(src.url, conditionals.get(src.url), limits)
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
        except Exception as exc:  # a feed no rule foresaw is one broken feed, never the whole gather
            log.exception("feed %s: unexpected failure", src.url)
            result.error = f"{src.name}: the feed could not be read ({type(exc).__name__})"
        return result

    def reported(src: SourceSettings) -> FeedResult:
        result = one(src)
        if on_done:
            on_done(result)
        return result

    with ThreadPoolExecutor(max_workers=max(1, min(limits.parallel, len(sources)))) as pool:
        return list(pool.map(reported, sources))


_HEADERS = {
    "User-Agent": USER_AGENT,
    "Accept": "application/rss+xml, application/atom+xml, application/xml;q=0.9, */*;q=0.5",
    "Accept-Encoding": "gzip, deflate",  # what _unpacked can undo, with the cap counted as it unpacks
}
_UNPACK_STEP = 64 * 1024  # at most this many bytes out of a decompressor at a time


class _Deadline:
    """One deadline for a whole request, connect, headers and body alike: when it passes, the
    connection's socket is shut down, which ends whatever read is waiting on it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx's trace extension: note the socket of each connection as it is made."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            sock = info["return_value"].get_extra_info("socket")
            with self._lock:
                if sock is not None:
                    self._sockets.append(sock)
                if self.expired:
                    self._shut(sock)
        if self.expired:
            raise httpx.TimeoutException("the deadline passed")

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket | None) -> None:
        try:
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


def _fetch_http(
    url: str, prior: Conditional | None, limits: Limits
) -> tuple[bytes, str | None, str | None] | None:
    """The body, ETag and Last-Modified; None when the server says 304 Not Modified."""
    headers = dict(_HEADERS)
    if prior and prior.etag:
        headers["If-None-Match"] = prior.etag
    if prior and prior.last_modified:
        headers["If-Modified-Since"] = prior.last_modified
    too_big = f"it is larger than {limits.max_bytes // (1024 * 1024)} MB"
    connect = min(limits.connect_seconds, limits.total_seconds)
    timeout = httpx.Timeout(limits.read_seconds, connect=connect)
    with _Deadline(limits.total_seconds) as deadline:
        try:
            # a client per feed: every request makes its own connection, so its deadline can end it
            with (
                httpx.Client(timeout=timeout, headers=headers, follow_redirects=True) as client,
                client.stream("GET", url, extensions={"trace": deadline.trace}) as response,
            ):
                if response.status_code == 304:
                    return None
                if response.status_code >= 400:
                    raise FeedError(f"the server answered {response.status_code} {response.reason_phrase}")
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > limits.max_bytes:
                    raise FeedError(too_big)
                chunks: list[bytes] = []
                size = 0
                encoding = response.headers.get("Content-Encoding", "")
                for chunk in _unpacked(_capped(response.iter_raw(), limits.max_bytes, too_big), encoding):
                    size += len(chunk)
                    if size > limits.max_bytes:
                        raise FeedError(too_big)
                    chunks.append(chunk)
                body = b"".join(chunks)
                return body, response.headers.get("ETag"), response.headers.get("Last-Modified")
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            if deadline.expired:
                raise FeedError(f"it took longer than {limits.total_seconds:g} seconds") from None
            if isinstance(exc, httpx.TimeoutException):
                raise FeedError("it did not answer in time") from None
            raise FeedError(f"it could not be reached ({type(exc).__name__}: {exc})") from None
        except httpx.HTTPError as exc:
            raise FeedError(f"it could not be reached ({type(exc).__name__}: {exc})") from None


def _capped(chunks: Iterable[bytes], max_bytes: int, too_big: str) -> Iterator[bytes]:
    """The bytes on the wire, at most `max_bytes` of them."""
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise FeedError(too_big)
        yield chunk


def _unpacked(chunks: Iterable[bytes], content_encoding: str) -> Iterator[bytes]:
    """The body with its Content-Encoding undone, layer by layer, in pieces of at most 64 KB: a
    compressed body is never unpacked whole, so the caller's cap holds as it is produced."""
    names = [n.strip().lower() for n in content_encoding.split(",") if n.strip()]
    names = [n for n in names if n != "identity"]
    if len(names) > 3:
        raise FeedError(f"it is encoded {len(names)} times over (Content-Encoding: {content_encoding[:80]})")
    for name in reversed(names):  # the last encoding applied is undone first
        if name not in ("gzip", "x-gzip", "deflate"):
            raise FeedError(f"it uses a content encoding this reader did not ask for ({name[:40]})")
        chunks = _inflate(chunks, deflate=name == "deflate")
    yield from chunks


def _inflate(chunks: Iterable[bytes], *, deflate: bool) -> Iterator[bytes]:
    unpacker: Any = None
    try:
        for chunk in chunks:
            if unpacker is None and chunk:
                # "deflate" is a zlib stream, or raw deflate from servers that misread the standard
                raw = deflate and (chunk[0] & 0x0F) != 8
                unpacker = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS | 32)
            while chunk and unpacker is not None and not unpacker.eof:
                out = unpacker.decompress(chunk, _UNPACK_STEP)
                chunk = unpacker.unconsumed_tail
                if out:
                    yield out
        while unpacker is not None and not unpacker.eof:  # output still held back after the input ended
            out = unpacker.decompress(b"", _UNPACK_STEP)
            if not out:
                break
            yield out
    except zlib.error as exc:
        raise FeedError(f"its compressed body is broken ({exc})") from None


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


_REFERENCE = re.compile(rb"&#(?:[xX]([0-9a-fA-F]{1,8})|([0-9]{1,10}));")


def _no_surrogate(m: re.Match[bytes]) -> bytes:
    value = int(m.group(1), 16) if m.group(1) else int(m.group(2))
    return b"&#xFFFD;" if 0xD800 <= value <= 0xDFFF else m.group(0)


def parse_feed(body: bytes, source: SourceSettings, *, now: datetime) -> list[FetchedStory]:
    """Stories of one feed document (RSS 0.9x/1.0/2.0, Atom): at most `source.max_items`, the
    newest, in the order the feed gave them."""
    # a character reference to a lone surrogate is no character: one such item would make the whole
    # document unreadable, so it becomes U+FFFD (the others' stories are kept)
    body = _REFERENCE.sub(_no_surrogate, body)
    try:
        parsed: Any = feedparser.parse(body, sanitize_html=False, resolve_relative_uris=False)
    except (ValueError, OverflowError) as exc:  # feedparser's loose parser on a reference like &#xD800;
        raise FeedError(f"it is not a readable feed ({type(exc).__name__}: {str(exc)[:200]})") from None
    entries = parsed.get("entries") or []
    if parsed.get("bozo") and not entries:
        reason = parsed.get("bozo_exception")
        raise FeedError(f"it is not a readable feed ({reason})" if reason else "it is not a readable feed")
    if not parsed.get("version") and not entries:
        raise FeedError("it is not an RSS or Atom feed")
    entries = _newest(entries, source.max_items, now=now)  # the cap before any entry is cleaned
    links = [canonical_link(e.get("link") or "") for e in entries]
    repeated = {link for link, n in Counter(links).items() if link and n > 1}
    stories = []
    for entry, link in zip(entries, links, strict=True):
        story = _story(entry, link, source, repeated_link=link in repeated, now=now)
        if story is not None:
            stories.append(story)
    return stories


def _newest(entries: list[Any], cap: int, *, now: datetime) -> list[Any]:
    """At most `cap` entries, the newest by their date (an undated one is stored as fetched now, so
    it counts as new), in the feed's order: a feed that lists its oldest first still gives today's."""
    if len(entries) <= cap:
        return entries

    def age(i: int) -> tuple[datetime, int]:
        return _published(entries[i], now=now) or now, -i

    return [entries[i] for i in sorted(heapq.nlargest(cap, range(len(entries)), key=age))]


def _story(
    entry: Any, link: str, source: SourceSettings, *, repeated_link: bool, now: datetime
) -> FetchedStory | None:
    title = clean_html(entry.get("title") or "").text
    link = without_placeholders(link)  # after canonical_link, which decodes a %5F into "_"
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
    category = _words(categories[0]) if categories else ""
    section = source.section or category or DEFAULT_SECTION
    return FetchedStory(
        identity=_identity(entry, link, title, source, repeated_link=repeated_link),
        source=source.name,
        title=title,
        link=link,
        summary=cut_words(content.text),
        bullets=tuple(content.bullets),
        author=(_words(entry.get("author") or "")[: widths.NAME] or None),
        image=_image(entry, content.images),
        section=section[: widths.NAME],
        published_at=_published(entry, now=now),
    )


def _identity(entry: Any, link: str, title: str, source: SourceSettings, *, repeated_link: bool) -> str:
    """guid; else the canonical link; else (or when the feed reuses its links) a hash of title and link."""
    guid = (entry.get("id") or "").strip()
    if guid:
        if guid.startswith(("http://", "https://")):
            return canonical_link(guid)[: widths.STORY_IDENTITY]
        if guid.startswith(("tag:", "urn:")):
            return guid[: widths.STORY_IDENTITY]
        # A bare guid like "42" is unique only within its own feed.
        return f"{source.url}#{guid}"[: widths.STORY_IDENTITY]
    if link and not repeated_link:
        return link[: widths.STORY_IDENTITY]
    digest = hashlib.sha256(f"{title}\n{link}".encode()).hexdigest()
    return f"sha256:{digest}"


def _published(entry: Any, *, now: datetime) -> datetime | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        struct = entry.get(key)
        if struct:
            try:
                when = datetime.fromtimestamp(calendar.timegm(struct), tz=UTC)
            except (ValueError, OverflowError, OSError):  # "0000-00-00": a date no calendar has
                return None
            if when > now + CLOCK_SKEW:  # a feed's mistake, or a bid to look newest: no date at all
                return None
            return min(when, now)
    return None


def _image(entry: Any, inline_images: list[str]) -> str | None:
    candidates: list[str] = []
    for media in entry.get("media_content") or []:
        image = media.get("medium") == "image" or (media.get("type") or "").startswith("image/")
        if image and not is_pixel(media):
            candidates.append(media.get("url") or "")
    candidates += [m.get("url") or "" for m in entry.get("media_thumbnail") or [] if not is_pixel(m)]
    for link in entry.get("links") or []:
        if link.get("rel") == "enclosure" and (link.get("type") or "").startswith("image/"):
            candidates.append(link.get("href") or "")
    candidates += inline_images
    return next((c for c in (without_placeholders(c).strip() for c in candidates) if is_safe_url(c)), None)


def _words(text: str) -> str:
    """A feed's plain text (an author, a category) on one line, with no placeholder in it."""
    return " ".join(without_placeholders(text).split())


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
