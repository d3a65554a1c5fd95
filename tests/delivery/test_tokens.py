import time

import pytest

from newsletter.delivery.tokens import BadToken, Tokens


def test_unsubscribe_tokens_are_signed_opaque_and_not_transferable() -> None:
    tokens = Tokens("a-secret-key-of-some-length")
    token = tokens.unsubscribe(42)
    assert tokens.read_unsubscribe(token) == 42
    assert "@" not in token and "42" not in token
    other = tokens.unsubscribe(43)
    body, mac = token.split(".")
    forged = [
        other.split(".")[0] + "." + mac,
        token[:-1] + ("A" if token[-1] != "A" else "B"),
        body,
        "",
        "x.y",
        token + "x",
    ]
    for bad in forged:
        with pytest.raises(BadToken):
            tokens.read_unsubscribe(bad)
    with pytest.raises(BadToken):
        Tokens("another-secret-key-entirely").read_unsubscribe(token)


def test_confirm_tokens_expire_and_are_not_unsubscribe_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = Tokens("a-secret-key-of-some-length")
    confirm = tokens.confirm(7)
    assert tokens.read_confirm(confirm) == 7
    with pytest.raises(BadToken):
        tokens.read_unsubscribe(confirm)
    with pytest.raises(BadToken):
        tokens.read_confirm(tokens.unsubscribe(7))
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 8 * 24 * 3600)  # eight days on, no sleeping
    with pytest.raises(BadToken, match="expired"):
        tokens.read_confirm(confirm)


def test_a_bounce_token_with_an_id_too_long_or_not_ascii_is_refused_not_an_error() -> None:
    """A VERP address is read from a stranger's mail: an id of 5,000 digits (Python's int() refuses
    4,300) or of non-ASCII digits is a BadToken, so the mail is judged by what else it says."""
    tokens = Tokens("a-secret-key-of-some-length")
    assert tokens.read_bounce(tokens.bounce(7, 42)) == (7, 42)
    for bad in (
        "9" * 5000 + "-1-abc",
        "1-" + "9" * 19 + "-abc",
        "\u0661-42-abc".encode().decode("unicode_escape"),
    ):
        with pytest.raises(BadToken):
            tokens.read_bounce(bad)
