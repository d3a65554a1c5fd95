"""One error root: every failure the command line reports as one plain sentence."""

__all__ = [
    "ConfigError",
    "FeedError",
    "NewsletterError",
    "NotFoundError",
    "SendBusyError",
    "TransportError",
]


class NewsletterError(Exception):
    """A failure of the work, reported as one sentence (exit 1)."""

    exit_code = 1


class ConfigError(NewsletterError):
    """Bad configuration or usage (exit 2)."""

    exit_code = 2


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
