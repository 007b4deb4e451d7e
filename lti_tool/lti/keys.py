"""The tool's signing keys: generated on first start, rotated with a grace period."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from ..db import utcnow
from .models import ToolKey
from .tokens import b64url_encode

KEY_SIZE = 2048


def _int_to_b64(value: int) -> str:
    return b64url_encode(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def public_jwk(public_key: rsa.RSAPublicKey, kid: str | None = None) -> dict[str, str]:
    numbers = public_key.public_numbers()
    jwk = {"kty": "RSA", "e": _int_to_b64(numbers.e), "n": _int_to_b64(numbers.n)}
    if kid is not None:
        jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
    return jwk


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 JWK thumbprint, used as the ``kid``."""
    canonical = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"))
    return b64url_encode(hashlib.sha256(canonical.encode()).digest())


def generate_key(session: Session) -> ToolKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    kid = thumbprint(public_jwk(private.public_key()))
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    key = ToolKey(
        kid=kid,
        private_pem=pem,
        public_jwk=json.dumps(public_jwk(private.public_key(), kid)),
    )
    session.add(key)
    session.flush()
    return key


def current_key(session: Session) -> ToolKey | None:
    return session.scalars(
        select(ToolKey).where(ToolKey.retire_after.is_(None)).order_by(ToolKey.id.desc()).limit(1)
    ).first()


def ensure_key(session: Session) -> ToolKey:
    """The signing key, created on first start."""
    return current_key(session) or generate_key(session)


def rotate(session: Session, grace_seconds: int, now: dt.datetime | None = None) -> ToolKey:
    """Add a new signing key; the old ones stay published for ``grace_seconds``."""
    now = now or utcnow()
    for old in session.scalars(select(ToolKey).where(ToolKey.retire_after.is_(None))):
        old.retire_after = now + dt.timedelta(seconds=grace_seconds)
    return generate_key(session)


def published_keys(session: Session, now: dt.datetime | None = None) -> list[ToolKey]:
    now = now or utcnow()
    return list(
        session.scalars(
            select(ToolKey)
            .where(or_(ToolKey.retire_after.is_(None), ToolKey.retire_after > now))
            .order_by(ToolKey.id)
        )
    )


def jwks(session: Session) -> dict[str, list[dict[str, Any]]]:
    return {"keys": [json.loads(k.public_jwk) for k in published_keys(session)]}


@dataclass(frozen=True)
class SigningKey:
    kid: str
    pem: str


_signing_cache: dict[str, SigningKey] = {}
_signing_lock = threading.Lock()


def signing_key(session: Session) -> SigningKey:
    key = ensure_key(session)
    with _signing_lock:
        cached = _signing_cache.get(key.kid)
        if cached is None:
            cached = _signing_cache[key.kid] = SigningKey(kid=key.kid, pem=key.private_pem)
    return cached
