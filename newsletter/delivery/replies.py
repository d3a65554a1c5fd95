"""What an SMTP reply means for one message: its fate (sent, deferred, bounced, failed), whether
it asks the whole send to slow down, and whether the failure is the recipient's own. Only the
server's own words count: never what a stranger's address put in the reply."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..db.models import DeliveryStatus

__all__ = ["SendResult", "classify_reply", "enhanced_status"]


@dataclass(frozen=True)
class SendResult:
    status: DeliveryStatus  # SENT, DEFERRED, BOUNCED, FAILED, or UNKNOWN (no reply after the final dot)
    reply: str
    throttled: bool = False  # the server asked us to slow down
    # the command whose reply decided, or was awaited when the session failed (MAIL, RCPT, DATA:
    # its own reply or the message's final one); "" when none did
    stage: str = ""
    code: int = 0  # that reply's code; 0 when none came
    enhanced: tuple[int, int, int] | None = None  # its RFC 3463 status (5.7.1), read from failures
    timed_out: bool = False  # the session failed waiting for the stage's reply

    @property
    def own_failure(self) -> bool:
        """The failure is this recipient's or this message's own, and says nothing of whether the
        relay takes mail: a refused recipient (any RCPT failure but 421, which closes the
        session), a recipient the relay could not check in time, or this message's content or
        policy refused for good at DATA (5.6.x, 5.7.x). The reply's words are not read: they may
        echo what a stranger chose."""
        if self.stage == "RCPT":
            return self.timed_out or (self.code >= 400 and self.code != 421)
        return (
            self.stage == "DATA"
            and 500 <= self.code < 600
            and self.enhanced is not None
            and self.enhanced[:2] in ((5, 6), (5, 7))
        )


# What a server says when it wants fewer messages from us, not when it defers one recipient
# (greylisting, a full mailbox, a lookup failure all say "try again later" too).
_THROTTLE = re.compile(r"\brate\b|rate.?limit|too many|throttl", re.I)
# What in a reply the recipient (a stranger) may have chosen: anything in angle or square brackets
# and what another server "said" (each pattern scans a stretch of text once: a hostile reply
# cannot make it backtrack); then every token with an @ or a dotted name (addresses, hosts, IPs).
_CHOSEN_BY_OTHERS = re.compile(r"<[^<>]*>|\[[^\[\]]*\]|said:[^\n]*", re.I)
_DOTTED = re.compile(r"\w\.\w")
_ENHANCED = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
# Enhanced status subjects about one recipient or one message, never the pool: addressing (X.1),
# mailbox (X.2), content (X.6).
_ONE_RECIPIENTS = frozenset((1, 2, 6))


def enhanced_status(code: int, text: str) -> tuple[int, int, int] | None:
    """The RFC 3463 status at the start of a reply's text ("5.7.1 ..."), if its class is the code's."""
    found = _ENHANCED.match(text)
    if found is None or int(found[1]) != code // 100:
        return None
    return int(found[1]), int(found[2]), int(found[3])


def _servers_own_words(text: str, recipient: str) -> str:
    """The reply without what the recipient may have chosen: its address, local part and domain
    wherever they are echoed, and every address-like token."""
    local, _, domain = recipient.rpartition("@")
    for chosen in (recipient, domain, local):
        if chosen:
            text = re.sub(rf"(?<!\w){re.escape(chosen)}(?!\w)", " ", text, flags=re.I)
    tokens = _CHOSEN_BY_OTHERS.sub(" ", text).split()
    return " ".join(t for t in tokens if "@" not in t and not _DOTTED.search(t))


def classify_reply(code: int, text: str, *, stage: str, recipient: str = "") -> SendResult:
    """The fate of a message from the server's reply and the stage (RCPT or DATA) it came at.
    Only 421 (the server closes the channel) and a 4xx that asks us to slow down (4.7.0 rate
    limits, 452 too many recipients) slow the whole send, and only the server's own words count:
    not `recipient` or any address a reply echoes, nor a reply whose enhanced status is about one
    recipient or message (4.1.x, 4.2.x, 4.6.x). Any other 4xx defers the one recipient."""
    if 200 <= code < 300:
        return SendResult(DeliveryStatus.SENT, f"{code} {text}".strip(), stage=stage, code=code)
    reply = f"{code} {text}".strip()
    enhanced = enhanced_status(code, text)
    if 400 <= code < 500:
        throttled = code == 421 or (
            (enhanced is None or enhanced[1] not in _ONE_RECIPIENTS)
            and bool(_THROTTLE.search(_servers_own_words(text, recipient)))
        )
        return SendResult(
            DeliveryStatus.DEFERRED, reply, throttled=throttled, stage=stage, code=code, enhanced=enhanced
        )
    status = DeliveryStatus.BOUNCED if stage == "RCPT" else DeliveryStatus.FAILED
    return SendResult(status, reply, stage=stage, code=code, enhanced=enhanced)
