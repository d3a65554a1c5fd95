"""DKIM (RFC 6376): rsa-sha256, relaxed/relaxed, with the key loaded once.

The signature is laid out, folded and hashed by dkimpy's own functions, so what dkimpy's verifier
checks is what was signed; the RSA operation is done by `cryptography` (OpenSSL), 24 times
faster than dkimpy's pure-Python RSA and without holding the GIL, so connection threads sign
in parallel. A digest message has its body hash computed from the issue's canonical pieces
(`relaxed_chunk`), which `compose` prepares once per issue."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy, compress_whitespace, strip_trailing_whitespace

from ..config import Settings
from ..errors import ConfigError, NewsletterError
from ..private import open_private, private_folder

__all__ = [
    "DkimSigner",
    "generate_key",
    "dns_record",
    "relaxed_chunk",
    "signer_for",
    "write_key",
    "SIGNED_HEADERS",
]

# Signed when present. RFC 8058 requires List-Unsubscribe and List-Unsubscribe-Post both signed;
# dkimpy's default list leaves List-Unsubscribe-Post out.
SIGNED_HEADERS = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"list-help",
    b"list-archive",
    b"feedback-id",
    b"auto-submitted",
    b"precedence",
    b"mime-version",
    b"content-type",
)
# Named once more than they occur, so a second copy added in transit breaks the signature.
OVERSIGNED = (b"from", b"subject", b"list-unsubscribe", b"list-unsubscribe-post")
_POLICY = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_NAME = b"DKIM-Signature"


def relaxed_chunk(chunk: bytes) -> bytes:
    """Relaxed body canonicalization of a chunk that begins at a line start and whose last line,
    if unfinished, is continued by a chunk starting with a non-space (as `compose` splices)."""
    return bytes(compress_whitespace(strip_trailing_whitespace(chunk)))


class DkimSigner:
    def __init__(self, *, domain: str, selector: str, private_key_pem: bytes) -> None:
        try:
            key = serialization.load_pem_private_key(private_key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"the DKIM private key could not be read: {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError("the DKIM private key is not an RSA key")
        self.key = key
        self.domain = domain.encode("ascii")
        self.selector = selector.encode("ascii")

    @classmethod
    def from_file(cls, path: Path, *, domain: str, selector: str) -> DkimSigner:
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"the DKIM private key {path} cannot be read ({exc.strerror}); "
                f"create one with 'newsletter dkim-keygen'"
            ) from None
        return cls(domain=domain, selector=selector, private_key_pem=pem)

    def sign(self, message: bytes) -> bytes:
        """Any message: parsed and canonicalized whole (the confirmation mail, a test send)."""
        headers, body = dkim.rfc822_parse(message)
        body_hash = hashlib.sha256(_POLICY.canonicalize_body(body)).digest()
        return self.header(headers, body_hash) + message

    def header(self, headers: Sequence[Sequence[bytes]], body_hash: bytes) -> bytes:
        """The DKIM-Signature line for these headers (as dkim.rfc822_parse gives them) and body hash."""
        present = {name.lower() for name, _ in headers}
        signed = [n for n in SIGNED_HEADERS if n in present] + [n for n in OVERSIGNED if n in present]
        fields = [
            (b"v", b"1"),
            (b"a", b"rsa-sha256"),
            (b"c", b"relaxed/relaxed"),
            (b"d", self.domain),
            (b"s", self.selector),
            (b"t", str(int(time.time())).encode("ascii")),
            (b"h", b" : ".join(signed)),
            (b"bh", base64.b64encode(body_hash)),
            (b"b", b"0" * 60),  # as dkimpy does: b= folds onto its own line, so refolding moves nothing
        ]
        value = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(_NAME))
        value = dkim.RE_BTAG.sub(b"\\1", value)
        h = hashlib.sha256()
        dkim.hash_headers(
            h,
            _POLICY,
            _POLICY.canonicalize_headers([list(x) for x in headers]),
            signed,
            (_NAME, b" " + value),
            dict(fields),
        )
        signature = self.key.sign(h.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        fields[-1] = (b"b", base64.b64encode(signature))
        value = dkim.fold(b"; ".join(b"=".join(f) for f in fields) + b"\r\n", namelen=len(_NAME))
        return _NAME + b": " + bytes(value)

    def body_hash(self, canonical_chunks: Iterable[bytes]) -> bytes:
        h = hashlib.sha256()
        for chunk in canonical_chunks:
            h.update(chunk)
        return h.digest()


def signer_for(settings: Settings) -> DkimSigner | None:
    """The signer `[dkim]` asks for, its key read once; None without `[dkim]`."""
    d = settings.dkim
    if d is None:
        return None
    return DkimSigner.from_file(settings.path(d.private_key_file), domain=d.domain, selector=d.selector)


def generate_key(bits: int = 2048) -> tuple[bytes, str]:
    """A new RSA key: (the private key as PEM, the public key as base64 DER for the DNS record)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, base64.b64encode(public).decode("ascii")


def write_key(path: Path, *, bits: int, replace: bool) -> str:
    """A new private key in `path`, readable by its owner only; returns the public key (base64
    DER). An existing key is kept unless `replace`: mail signed with it stops verifying."""
    if path.exists() and not replace:
        raise NewsletterError(f"{path} already exists; keep it, or replace it with 'dkim-keygen --force'")
    pem, public = generate_key(bits)
    private_folder(path.parent)
    with open_private(path, "wb") as f:
        f.write(pem)
    return public


def dns_record(public_key_b64: str) -> str:
    return f"v=DKIM1; k=rsa; p={public_key_b64}"
