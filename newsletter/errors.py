"""One error root: every failure the command line reports as one plain sentence.

Every error the newsletter raises on purpose is a NewsletterError: the command line prints its
sentence and exits with its `exit_code` (1 the work failed, 2 bad usage or configuration)."""

__all__ = [
    "BadToken",
    "ConfigError",
    "DatabaseError",
    "FeedError",
    "NewsletterError",
    "NotFoundError",
    "SendBusyError",
    "SenderFenced",
    "TemplateError",
    "TransportError",
    "UsageError",
]


class NewsletterError(Exception):
    """A failure of the work, reported as one sentence (exit 1)."""

    exit_code = 1


class ConfigError(NewsletterError):
    """Bad configuration: the file, a key, the environment, a key file it names (exit 2)."""

    exit_code = 2


class TemplateError(NewsletterError):
    """A template of the operator's (or one it includes) fails the check: each problem as
    FILE:LINE: reason, one a line (exit 2)."""

    exit_code = 2


class UsageError(NewsletterError):
    """A command was given a value it cannot take (exit 2)."""

    exit_code = 2


class DatabaseError(NewsletterError):
    """The database could not be reached or used; the sentence names it and says what it answered
    (`said`, alone)."""

    def __init__(self, message: str, said: str = "") -> None:
        super().__init__(message)
        self.said = said or message


class BadToken(NewsletterError):
    """A signed token (a confirm or unsubscribe link, a VERP address) is tampered with, of another
    purpose, or expired."""


class FeedError(NewsletterError):
    """A feed could not be fetched or parsed."""


class NotFoundError(NewsletterError):
    """An issue, subscriber or file that was named does not exist."""


class SendBusyError(NewsletterError):
    """Another sender holds the issue."""


class SenderFenced(NewsletterError):
    """Another sender declared this one dead and took its rows: it must stop and record nothing."""


class TransportError(NewsletterError):
    """The mail transport could not be used at all (not one message's fate)."""
