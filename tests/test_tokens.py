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
