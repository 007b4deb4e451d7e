"""Platform public keys: fetched from the registered keyset URL, cached in Redis for as long as
the platform's ``Cache-Control: max-age`` allows, parsed once per process, and re-fetched once
when a launch names a ``kid`` we have not seen (platforms rotate keys)."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import jwt
import redis
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from .errors import LaunchError, unauthorized

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE = 300  # when the platform sends no Cache-Control max-age
LONGEST_MAX_AGE = 24 * 3600
REFETCH_THROTTLE = 10  # at most one unknown-kid re-fetch per keyset URL this often
MAX_JWKS_BYTES = 1024 * 1024
_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)", re.IGNORECASE)


def max_age(cache_control: str | None) -> int:
    """Seconds a keyset may be cached, from its Cache-Control header."""
    if not cache_control:
        return DEFAULT_MAX_AGE
    lowered = cache_control.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return 0
    match = _MAX_AGE.search(cache_control)
    if match is None:
        return DEFAULT_MAX_AGE
    return min(int(match.group(1)), LONGEST_MAX_AGE)


@dataclass(frozen=True)
class KeySet:
    expires_at: float  # wall-clock seconds
    keys: dict[str, tuple[rsa.RSAPublicKey, str | None]]  # kid -> (key, alg declared)


def parse_keyset(document: Any, url: str) -> dict[str, tuple[rsa.RSAPublicKey, str | None]]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise unauthorized(
            "platform_keyset_invalid",
            f"The platform's keyset at {url} is not a JWKS document (no 'keys' list).",
        )
    keys: dict[str, tuple[rsa.RSAPublicKey, str | None]] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") != "RSA":
            continue
        if entry.get("use", "sig") != "sig" or not isinstance(entry.get("kid"), str):
            continue
        try:
            key = jwt.PyJWK(entry, algorithm="RS256").key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            log.warning("skipping an unusable key %r in %s", entry.get("kid"), url)
            continue
        if isinstance(key, rsa.RSAPublicKey):
            alg = entry.get("alg")
            keys[entry["kid"]] = (key, alg if isinstance(alg, str) else None)
    return keys


class PlatformKeys:
    def __init__(self, redis_client: redis.Redis, timeout: float) -> None:
        self.redis = redis_client
        self.timeout = timeout
        self.http = requests.Session()
        self.http.headers["User-Agent"] = "Lifeline-LTI/1.0"
        self._sets: dict[str, KeySet] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _redis_key(url: str) -> str:
        return "lifeline:jwks:" + url

    def _fetch(self, url: str) -> KeySet:
        try:
            response = self.http.get(url, timeout=self.timeout)
        except requests.RequestException as exc:
            raise unauthorized(
                "platform_keyset_unreachable",
                f"Lifeline could not fetch the platform's public keys from {url} "
                f"({type(exc).__name__}).",
                "Check that the keyset URL registered for this platform is right and reachable.",
            ) from None
        if response.status_code != 200 or len(response.content) > MAX_JWKS_BYTES:
            raise unauthorized(
                "platform_keyset_unreachable",
                f"The platform's keyset URL {url} answered HTTP {response.status_code}.",
                "Check the keyset URL registered for this platform.",
            )
        try:
            document = response.json()
        except (ValueError, RecursionError):  # RecursionError: nested deeper than json goes
            raise unauthorized(
                "platform_keyset_invalid", f"The platform's keyset at {url} is not JSON."
            ) from None
        ttl = max_age(response.headers.get("Cache-Control"))
        keyset = KeySet(time.time() + ttl, parse_keyset(document, url))
        if ttl > 0:
            payload = json.dumps({"expires_at": keyset.expires_at, "jwks": document})
            self.redis.set(self._redis_key(url), payload, ex=ttl)
        return keyset

    def _from_redis(self, url: str) -> KeySet | None:
        raw = self.redis.get(self._redis_key(url))
        if raw is None:
            return None
        try:
            cached = json.loads(raw)
            return KeySet(float(cached["expires_at"]), parse_keyset(cached["jwks"], url))
        except (ValueError, KeyError, TypeError, LaunchError):
            return None

    def _remember(self, url: str, keyset: KeySet) -> KeySet:
        with self._lock:
            self._sets[url] = keyset
        return keyset

    def _current(self, url: str) -> KeySet:
        keyset = self._sets.get(url)
        if keyset is not None and keyset.expires_at > time.time():
            return keyset
        keyset = self._from_redis(url)
        if keyset is None or keyset.expires_at <= time.time():
            keyset = self._fetch(url)
        return self._remember(url, keyset)

    def key_for(self, url: str, kid: str) -> tuple[rsa.RSAPublicKey, str | None]:
        keyset = self._current(url)
        found = keyset.keys.get(kid)
        if found is not None:
            return found
        # An unknown kid: the platform may have rotated. Re-fetch once, throttled across
        # processes so a flood of made-up kids cannot turn us into a crawler of its JWKS.
        if self.redis.set("lifeline:jwks-refetch:" + url, "1", nx=True, ex=REFETCH_THROTTLE):
            keyset = self._remember(url, self._fetch(url))
            found = keyset.keys.get(kid)
            if found is not None:
                return found
        raise unauthorized(
            "unknown_kid",
            f"The id_token names key {kid!r}, which is not in the platform's keyset at {url}.",
            "The platform may have rotated its keys; if this persists, check the keyset URL.",
        )

    def forget(self) -> None:
        with self._lock:
            self._sets.clear()
