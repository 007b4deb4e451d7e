"""Compact JWS parsing and RS256 verification on cached key objects.

PyJWT's ``decode`` spends most of its time outside the RSA operation (it re-validates and
re-parses on every call), and pylti1p3 converts the JWK to PEM on every launch. Launches are
the hot path, so we split the token ourselves with a strict base64url check, verify the
signature with ``cryptography`` on a key object parsed once, and check the claims in
``launch.py``. Signing (deep linking responses) still goes through PyJWT.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .errors import LaunchError, bad_request, unauthorized

MAX_TOKEN_BYTES = 64 * 1024
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "RS256": hashes.SHA256,
    "RS384": hashes.SHA384,
    "RS512": hashes.SHA512,
}
ALLOWED_ALGORITHMS = frozenset(_HASHES)


def b64url_decode(segment: str) -> bytes:
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class UnverifiedToken:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return str(self.header.get("alg", ""))

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) and kid else None


def parse_token(token: str) -> UnverifiedToken:
    """Split a compact JWS into header, claims and signature without trusting any of it."""
    if len(token) > MAX_TOKEN_BYTES:
        raise LaunchError(
            413,
            "id_token_too_large",
            "The launch message is too large",
            f"The id_token is {len(token)} bytes; Lifeline accepts at most {MAX_TOKEN_BYTES}.",
        )
    parts = token.split(".")
    if len(parts) != 3:
        raise bad_request(
            "id_token_malformed",
            "The id_token is not a signed JWT (it must have three dot-separated parts).",
        )
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise bad_request(
            "id_token_malformed", "The id_token could not be decoded as base64url JSON."
        ) from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise bad_request("id_token_malformed", "The id_token header and body must be objects.")
    if not _plain_text(header) or not _plain_text(claims):
        raise bad_request(
            "id_token_malformed",
            "The id_token contains a NUL character or an unpaired surrogate, which no claim may "
            "carry.",
        )
    return UnverifiedToken(
        header=header,
        claims=claims,
        signing_input=f"{parts[0]}.{parts[1]}".encode("ascii"),
        signature=signature,
    )


def _plain_text(value: dict[str, Any]) -> bool:
    """No NUL and no unpaired surrogate anywhere: neither PostgreSQL nor a UTF-8 page (nor
    anything else downstream) can carry them, so they are refused here, once."""
    try:
        text = json.dumps(value, ensure_ascii=False)
        text.encode("utf-8")
    except (ValueError, RecursionError):
        return False
    return "\\u0000" not in text


def check_algorithm(token: UnverifiedToken) -> str:
    alg = token.alg
    if alg not in ALLOWED_ALGORITHMS:
        raise unauthorized(
            "algorithm_not_allowed",
            f"The id_token is signed with {alg or 'no algorithm'!r}; LTI 1.3 requires RS256 "
            "(RS384 and RS512 are also accepted).",
        )
    return alg


def verify_signature(token: UnverifiedToken, key: rsa.RSAPublicKey, alg: str) -> None:
    try:
        key.verify(token.signature, token.signing_input, padding.PKCS1v15(), _HASHES[alg]())
    except InvalidSignature:
        raise unauthorized(
            "bad_signature",
            "The id_token's signature does not match the platform's public key.",
            "The platform may be using a key Lifeline does not know: check the keyset URL "
            "registered for this platform.",
        ) from None
