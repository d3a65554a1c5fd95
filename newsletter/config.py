"""Load config.toml into frozen, typed settings; refuse what is unknown or mistyped, by name."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import secrets
import tomllib
import types
import typing
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.utils import getaddresses
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from .errors import ConfigError
from .private import private_folder

__all__ = [
    "Settings",
    "load_settings",
    "find_config_path",
    "mailbox",
    "read_secret_key",
    "ensure_secret_key",
]


@dataclass(frozen=True)
class NewsletterSettings:
    name: str
    sender: str
    base_url: str
    postal_address: str
    reply_to: str | None = None
    timezone: str = "UTC"
    # who gets the "Review:" note when an issue is built ahead of its send ([schedule] review_minutes)
    editors: tuple[str, ...] = ()
    secret_key_file: str = ".secret_key"
    # the operator's own templates: a file here overrides the packaged one of the same path (SPEC 10)
    templates_dir: str = "templates"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def sender_address(self) -> str:
        return getaddresses([self.sender])[0][1]

    @property
    def sender_mailbox(self) -> Address:
        return mailbox(*getaddresses([self.sender])[0])

    @property
    def reply_to_mailbox(self) -> Address | None:
        return mailbox(*getaddresses([self.reply_to])[0]) if self.reply_to else None


def mailbox(display_name: str | None, email: str) -> Address:
    """An address for a header: the display name kept apart from the address, never re-parsed."""
    local, _, domain = email.rpartition("@")
    return Address(display_name=display_name or "", username=local, domain=domain)


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///subscribers.db"


@dataclass(frozen=True)
class ScheduleSettings:
    cron: str = "0 7 * * *"
    misfire_grace_seconds: int = 3600
    # The editor's hour (SPEC 9): build this many minutes before each cron time and mail the
    # editors; 0 builds and sends at the cron time. "hold": nothing goes out until approved.
    review_minutes: int = 0
    review_default: Literal["send", "hold"] = "send"


@dataclass(frozen=True)
class DigestSettings:
    window_hours: int = 24
    max_stories: int = 12
    min_stories: int = 1
    subject: str = "{{ date }}: {{ lead.title }}"
    cluster: bool = True
    # the best measured on tests/data/ (benchmarks/clustering.py); content/cluster.py says what it means
    cluster_threshold: float = 0.33
    weekly_day: str = ""  # a weekday name: the weekly edition's day; "": no weekly edition, no weekly choice
    weekly_max_stories: int = 15

    @property
    def weekly(self) -> bool:
        """Whether there is a weekly edition, so readers may choose it."""
        return bool(self.weekly_day)


MAX_HOURS = 24 * 365 * 10  # ten years: beyond it a timedelta overflows soon enough to matter

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

# Entries read from one feed when its table does not say: a day's news many times over, and a
# feed of 90,000 entries is not 90,000 stories.
DEFAULT_MAX_ITEMS = 200


@dataclass(frozen=True)
class SourceSettings:
    name: str
    url: str
    section: str | None = None
    max_items: int = DEFAULT_MAX_ITEMS

    @property
    def is_remote(self) -> bool:
        return self.url.startswith(("http://", "https://"))


@dataclass(frozen=True)
class DeliverySettings:
    transport: Literal["outbox", "smtp"] = "outbox"
    outbox_dir: str = "outbox"
    rate_per_second: float = 0
    max_attempts: int = 3
    # A connection lost after the message's final dot: "unknown" (reported; resent only with
    # send --resend-unknown) or "retry" (sent again: a rare duplicate rather than a rare loss).
    lost_reply: Literal["unknown", "retry"] = "unknown"
    # Sender processes that compose, sign and speak SMTP (each over a share of [smtp] connections);
    # 0: one per core, at most 8. The SMTP transport only: the outbox is written by one process.
    processes: int = 0

    def sender_processes(self) -> int:
        return self.processes or min(os.cpu_count() or 1, 8)


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "localhost"
    port: int = 587
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str = ""
    connections: int = 4
    timeout_seconds: float = 30


@dataclass(frozen=True)
class DkimSettings:
    domain: str
    selector: str
    private_key_file: str = "dkim.pem"


@dataclass(frozen=True)
class BounceSettings:
    return_path: str
    mailbox: str = "maildir:bounces"
    soft_bounce_limit: int = 3
    soft_bounce_window_days: int = 30
    check_every_minutes: int = 15  # how often `newsletter schedule` reads the mailbox; 0: never


@dataclass(frozen=True)
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    signups_per_ip_per_hour: int = 20
    # addresses or networks of the reverse proxies in front: their X-Forwarded-For is believed
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class SubscriberSettings:
    welcome: bool = True  # a reader who confirms gets one welcome mail
    remind_after_hours: float = 48  # one reminder to a pending signup after this long; 0: never
    prune_pending_after_hours: float = 336  # a signup still pending this long is deleted; 0: never


@dataclass(frozen=True)
class Settings:
    newsletter: NewsletterSettings
    sources: tuple[SourceSettings, ...]
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    digest: DigestSettings = field(default_factory=DigestSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    dkim: DkimSettings | None = None
    bounces: BounceSettings | None = None
    web: WebSettings = field(default_factory=WebSettings)
    subscribers: SubscriberSettings = field(default_factory=SubscriberSettings)
    # Not keys of the file: where it was, and what came from the environment.
    config_dir: Path = Path(".")
    smtp_password: str = ""

    def path(self, value: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.config_dir / p

    @property
    def database_url(self) -> str:
        return self.database.url

    @property
    def sections(self) -> tuple[str, ...]:
        """What a reader may choose from: the distinct `section` values of the sources, in the
        order of the file (a source without one is in every reader's issue)."""
        return tuple(dict.fromkeys(s.section for s in self.sources if s.section and s.section.strip()))

    @property
    def templates_path(self) -> Path:
        return self.path(self.newsletter.templates_dir)

    @property
    def secret_key_path(self) -> Path:
        return self.path(self.newsletter.secret_key_file)

    @property
    def return_path(self) -> str:
        """The envelope sender, where bounces go, of every mail (issues, confirmations, test
        copies): `[bounces] return_path`, else the sender's own address. An issue's deliveries
        add a VERP token to it (`delivery.sending.envelope_sender`)."""
        return self.bounces.return_path if self.bounces else self.newsletter.sender_address


_TABLE_KEYS = {f.name for f in dataclasses.fields(Settings)} - {"config_dir", "smtp_password"}


def find_config_path(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    if env := os.environ.get("NEWSLETTER_CONFIG"):
        return Path(env)
    return Path("config.toml")


def load_settings(path: Path) -> Settings:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no configuration file at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return settings_from_dict(raw, config_dir=path.resolve().parent)


def settings_from_dict(raw: dict[str, Any], *, config_dir: Path) -> Settings:
    unknown = sorted(set(raw) - _TABLE_KEYS)
    if unknown:
        raise ConfigError(f"unknown configuration key '{unknown[0]}'")
    settings: Settings = _build(Settings, raw, "")
    settings = dataclasses.replace(
        settings,
        config_dir=config_dir,
        database=_database_with_env(settings.database, config_dir),
        smtp_password=os.environ.get("NEWSLETTER_SMTP_PASSWORD", ""),
    )
    _check(settings)
    return settings


def _database_with_env(db: DatabaseSettings, config_dir: Path) -> DatabaseSettings:
    url = os.environ.get("NEWSLETTER_DATABASE_URL") or db.url
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        url = prefix + str(config_dir / url[len(prefix) :])
    return DatabaseSettings(url=url)


def _build(cls: type[Any], table: Any, where: str) -> Any:
    """Make dataclass `cls` from a TOML table, naming any bad key by its dotted path."""
    if not isinstance(table, dict):
        raise ConfigError(f"'{where}' must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name in _file_keys(cls)}
    for key in table:
        if key not in fields:
            raise ConfigError(f"unknown configuration key '{_join(where, key)}'")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        dotted = _join(where, name)
        if name not in table:
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if not has_default:
                raise ConfigError(f"missing required configuration key '{dotted}'")
            continue
        values[name] = _convert(hints[name], table[name], dotted)
    return cls(**values)


def _file_keys(cls: type[Any]) -> set[str]:
    names = {f.name for f in dataclasses.fields(cls)}
    return names & _TABLE_KEYS if cls is Settings else names


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _convert(hint: Any, value: Any, dotted: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, dotted)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(f'"{a}"' for a in args)
            raise ConfigError(f"configuration key '{dotted}' must be one of {choices}")
        return value
    if origin is tuple and not dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise ConfigError(f"configuration key '{dotted}' must be a list")
        return tuple(_convert(args[0], item, f"{dotted}[{i}]") for i, item in enumerate(value))
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"'{dotted}' must be a list of tables ([[{dotted}]])")
        return tuple(_build(args[0], item, f"{dotted}[{i}]") for i, item in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type[Any], hint), value, dotted)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"configuration key '{dotted}' must be true or false")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"configuration key '{dotted}' must be a number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"configuration key '{dotted}' must be a whole number")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"configuration key '{dotted}' must be a string")
        return value
    raise ConfigError(f"configuration key '{dotted}' has an unsupported type")  # pragma: no cover


def _joins_sections(section: str, sections: tuple[str, ...]) -> bool:
    """Whether a section's name is others' joined by a separator ("A;B" beside "A" and "B")."""
    known = {n.casefold() for n in sections if n != section}
    for separator in ";,":
        pieces = [p.strip().casefold() for p in section.split(separator)]
        if len(pieces) > 1 and all(p in known for p in pieces):
            return True
    return False


def _check(s: Settings) -> None:
    """Rules beyond types: ranges, formats, things that must parse."""

    def need(ok: bool, key: str, reason: str) -> None:
        if not ok:
            raise ConfigError(f"configuration key '{key}' {reason}")

    n = s.newsletter
    need(bool(n.name.strip()), "newsletter.name", "must not be empty")
    need(_one_address(n.sender), "newsletter.sender", "must be one email address")
    need(n.reply_to is None or _one_address(n.reply_to), "newsletter.reply_to", "must be one email address")
    need(
        n.base_url.startswith(("http://", "https://")),
        "newsletter.base_url",
        "must start with http:// or https://",
    )
    need(bool(n.postal_address.strip()), "newsletter.postal_address", "must not be empty")
    try:
        ZoneInfo(n.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"configuration key 'newsletter.timezone' names no known time zone: {n.timezone!r}"
        ) from None
    for i, proxy in enumerate(s.web.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(
                f"configuration key 'web.trusted_proxies[{i}]' is not an IP address or network: {proxy!r}"
            ) from None
    need(len(s.schedule.cron.split()) == 5, "schedule.cron", "must have five fields")
    need(s.schedule.misfire_grace_seconds >= 0, "schedule.misfire_grace_seconds", "must not be negative")
    need(0 <= s.schedule.review_minutes <= 24 * 60, "schedule.review_minutes", "must be 0 to 1440")
    need(
        s.schedule.review_default == "send" or s.schedule.review_minutes > 0,
        "schedule.review_default",
        'is "hold" only with schedule.review_minutes set (an issue held with no review would never go)',
    )
    for i, editor in enumerate(n.editors):
        need(_one_address(editor), f"newsletter.editors[{i}]", "must be one email address")
    need(
        bool(n.editors) or not s.schedule.review_minutes,
        "newsletter.editors",
        "must name at least one address when schedule.review_minutes is set",
    )
    d = s.digest
    need(d.window_hours > 0, "digest.window_hours", "must be positive")
    need(d.max_stories > 0, "digest.max_stories", "must be positive")
    need(
        0 <= d.min_stories <= d.max_stories, "digest.min_stories", "must be between 0 and digest.max_stories"
    )
    need(0 <= d.cluster_threshold <= 1, "digest.cluster_threshold", "must be a number from 0 to 1")
    need(
        d.weekly_day.lower() in WEEKDAYS or not d.weekly_day,
        "digest.weekly_day",
        f'must be a weekday name ({", ".join(WEEKDAYS)}) or "" (no weekly edition), not {d.weekly_day!r}',
    )
    need(d.weekly_max_stories > 0, "digest.weekly_max_stories", "must be positive")
    try:
        SandboxedEnvironment().from_string(d.subject)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"configuration key 'digest.subject' is not a valid template: {exc}") from None
    need(len(s.sources) > 0, "sources", "must name at least one feed ([[sources]])")
    for i, src in enumerate(s.sources):
        need(bool(src.url.strip()), f"sources[{i}].url", "must not be empty")
        # the lengths its stories and its state are stored in
        need(len(src.name) <= 200, f"sources[{i}].name", "must be at most 200 characters")
        need(len(src.url) <= 1000, f"sources[{i}].url", "must be at most 1000 characters")
        need(src.max_items > 0, f"sources[{i}].max_items", "must be positive")
        section = src.section or ""
        if section.strip():  # a name readers choose: one spelling on the page, the CLI and a CSV
            need(section == section.strip(), f"sources[{i}].section", "must not begin or end with blanks")
            need(len(section) <= 200, f"sources[{i}].section", "must be at most 200 characters")
            need(section.isprintable(), f"sources[{i}].section", "must not hold a control character")
            need(
                not _joins_sections(section, s.sections),
                f"sources[{i}].section",
                "must not be other sections joined by ';' or ',' (a CSV cell or the command line "
                "could not tell it from them)",
            )
    need(s.delivery.rate_per_second >= 0, "delivery.rate_per_second", "must not be negative")
    need(s.delivery.max_attempts >= 1, "delivery.max_attempts", "must be at least 1")
    need(0 <= s.delivery.processes <= 64, "delivery.processes", "must be 0 (one per core) to 64")
    need(1 <= s.smtp.port <= 65535, "smtp.port", "must be a port number")
    need(s.smtp.connections >= 1, "smtp.connections", "must be at least 1")
    need(s.smtp.timeout_seconds > 0, "smtp.timeout_seconds", "must be positive")
    need(1 <= s.web.port <= 65535, "web.port", "must be a port number")
    need(s.web.signups_per_ip_per_hour >= 1, "web.signups_per_ip_per_hour", "must be at least 1")
    for key in ("remind_after_hours", "prune_pending_after_hours"):  # nan and inf are TOML floats too
        hours = getattr(s.subscribers, key)
        need(
            0 <= hours <= MAX_HOURS,
            f"subscribers.{key}",
            f"must be a number of hours from 0 (never) to {MAX_HOURS}",
        )
    need(bool(n.templates_dir.strip()), "newsletter.templates_dir", "must not be empty")
    if s.bounces is not None:
        need("@" in s.bounces.return_path, "bounces.return_path", "must be an email address")


def _one_address(value: str) -> bool:
    if "\r" in value or "\n" in value:
        return False
    pairs = getaddresses([value])
    return len(pairs) == 1 and "@" in pairs[0][1]


def read_secret_key(settings: Settings) -> str:
    """The signing key: $NEWSLETTER_SECRET_KEY, else the secret key file."""
    if env := os.environ.get("NEWSLETTER_SECRET_KEY"):
        return env
    try:
        key = settings.secret_key_path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(
            f"no secret key: set NEWSLETTER_SECRET_KEY or run 'newsletter init' "
            f"to create {settings.secret_key_path}"
        ) from None
    if len(key) < 16:
        raise ConfigError(
            f"the secret key in {settings.secret_key_path} is too short (16 characters at least)"
        )
    return key


def ensure_secret_key(settings: Settings) -> bool:
    """Create the secret key file with a random key when missing; True if it was created."""
    path = settings.secret_key_path
    if os.environ.get("NEWSLETTER_SECRET_KEY") or path.exists():
        return False
    private_folder(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secrets.token_urlsafe(48) + "\n")
    return True
