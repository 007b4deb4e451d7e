"""Platform registrations in the database, and a short per-process cache for launches."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from .models import Deployment, Platform, PlatformStatus

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


class RegistrationError(ValueError):
    """A registration request is invalid; the message says which field and why."""


@dataclass(frozen=True)
class RegistrationInfo:
    """What a launch needs to know about a registration; immutable so it can be cached."""

    id: int
    name: str
    issuer: str
    client_id: str
    auth_login_url: str
    auth_token_url: str
    keyset_url: str
    token_audience: str | None
    status: str
    deployment_ids: frozenset[str]
    accept_new_deployments: bool = False

    @property
    def active(self) -> bool:
        return self.status == PlatformStatus.ACTIVE.value

    @classmethod
    def of(cls, platform: Platform) -> RegistrationInfo:
        return cls(
            id=platform.id,
            name=platform.name,
            issuer=platform.issuer,
            client_id=platform.client_id,
            auth_login_url=platform.auth_login_url,
            auth_token_url=platform.auth_token_url,
            keyset_url=platform.keyset_url,
            token_audience=platform.token_audience,
            status=platform.status,
            deployment_ids=frozenset(d.deployment_id for d in platform.deployments),
            accept_new_deployments=platform.accept_new_deployments,
        )

    def knows_deployment(self, deployment_id: str) -> bool:
        """Whether a launch may use this deployment id (known, or new ones accepted)."""
        return deployment_id in self.deployment_ids or self.accept_new_deployments


def check_url(field: str, value: str) -> str:
    """Platform endpoints must be https; plain http is accepted only on a loopback host."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
    except ValueError:
        raise RegistrationError(f"{field} {value[:200]!r} is not a valid URL.") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise RegistrationError(f"{field} {value!r} is not an absolute http(s) URL.")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise RegistrationError(
            f"{field} {value!r} must use https (plain http is only allowed on localhost)."
        )
    if len(value) > 1000:
        raise RegistrationError(f"{field} is longer than 1000 characters.")
    return value


def _check_text(field: str, value: str, limit: int) -> str:
    value = value.strip()
    if not value:
        raise RegistrationError(f"{field} must not be empty.")
    if len(value) > limit:
        raise RegistrationError(f"{field} is longer than {limit} characters.")
    return value


def add_platform(
    session: Session,
    *,
    name: str,
    issuer: str,
    client_id: str,
    auth_login_url: str,
    auth_token_url: str,
    keyset_url: str,
    deployment_ids: Iterable[str],
    token_audience: str | None = None,
    status: PlatformStatus = PlatformStatus.ACTIVE,
    accept_new_deployments: bool = False,
) -> Platform:
    issuer = _check_text("issuer", issuer, 500)
    client_id = _check_text("client id", client_id, 255)
    existing = session.scalars(
        select(Platform).where(Platform.issuer == issuer, Platform.client_id == client_id)
    ).first()
    if existing is not None:
        raise RegistrationError(
            f"A platform with issuer {issuer!r} and client id {client_id!r} is already "
            f"registered (#{existing.id}, {existing.name!r})."
        )
    deployments = sorted({_check_text("deployment id", d, 255) for d in deployment_ids})
    platform = Platform(
        name=_check_text("name", name, 200),
        issuer=issuer,
        client_id=client_id,
        auth_login_url=check_url("auth login URL", auth_login_url),
        auth_token_url=check_url("token URL", auth_token_url),
        keyset_url=check_url("keyset URL", keyset_url),
        token_audience=token_audience or None,
        status=status.value,
        accept_new_deployments=accept_new_deployments,
        deployments=[Deployment(deployment_id=d) for d in deployments],
    )
    session.add(platform)
    session.flush()
    return platform


def add_deployment(session: Session, platform: Platform, deployment_id: str) -> Deployment:
    deployment_id = _check_text("deployment id", deployment_id, 255)
    for existing in platform.deployments:
        if existing.deployment_id == deployment_id:
            return existing
    deployment = Deployment(deployment_id=deployment_id)
    platform.deployments.append(deployment)
    session.flush()
    return deployment


def _check_token_endpoint_is_its_own(
    session: Session, issuer: str, token_url: str, token_audience: str | None
) -> None:
    """A registration may not use the token endpoint (or token audience) of a platform with
    another issuer. Otherwise a platform registered dynamically could name another LMS's token
    URL (and Lifeline's client id there): that LMS would issue Lifeline an access token, which
    Lifeline would then send to the service URLs of the first platform's launches, handing it
    a token to the other LMS's rosters and gradebook. Platforms of one issuer (Blackboard's
    central issuer, Canvas cloud) share endpoints legitimately."""
    endpoints = {token_url}
    if token_audience:
        endpoints.add(token_audience)
    clash = session.scalars(
        select(Platform).where(
            Platform.issuer != issuer,
            (Platform.auth_token_url.in_(endpoints)) | (Platform.token_audience.in_(endpoints)),
        )
    ).first()
    if clash is not None:
        raise RegistrationError(
            f"The token endpoint {token_url!r} belongs to another registered platform "
            f"({clash.name!r}, issuer {clash.issuer!r}); a platform must use its own. An "
            "administrator can register it by hand if this is intended."
        )


def save_registration(
    session: Session,
    *,
    name: str,
    issuer: str,
    client_id: str,
    auth_login_url: str,
    auth_token_url: str,
    keyset_url: str,
    deployment_ids: Iterable[str],
    token_audience: str | None,
    status: PlatformStatus,
    accept_new_deployments: bool = True,
) -> tuple[Platform, bool]:
    """Store a dynamic registration; returns the platform and whether it is new.

    A platform that registers the same (issuer, client_id) again (re-registration after a
    change on its side) updates its endpoints and adds deployments, but keeps its name and
    status: an admin who disabled it must not see it come back by itself. One exception: an
    *active* platform whose keys, login or token endpoints move is ``pending`` again, so an
    administrator approves the change. Whoever can serve a configuration from the issuer's
    host (or a subdomain of it) and answer with an existing client id could otherwise point
    an approved platform at keys of their own and sign launches as any of its users.
    """
    issuer = _check_text("issuer", issuer, 500)
    client_id = _check_text("client id", client_id, 255)
    _check_token_endpoint_is_its_own(session, issuer, auth_token_url, token_audience)
    existing = session.scalars(
        select(Platform)
        .where(Platform.issuer == issuer, Platform.client_id == client_id)
        .with_for_update()
    ).first()
    if existing is None:
        return (
            add_platform(
                session,
                name=name,
                issuer=issuer,
                client_id=client_id,
                auth_login_url=auth_login_url,
                auth_token_url=auth_token_url,
                keyset_url=keyset_url,
                deployment_ids=deployment_ids,
                token_audience=token_audience,
                status=status,
                accept_new_deployments=accept_new_deployments,
            ),
            True,
        )
    before = (
        existing.auth_login_url,
        existing.auth_token_url,
        existing.keyset_url,
        existing.token_audience,
    )
    existing.auth_login_url = check_url("auth login URL", auth_login_url)
    existing.auth_token_url = check_url("token URL", auth_token_url)
    existing.keyset_url = check_url("keyset URL", keyset_url)
    existing.token_audience = token_audience or None
    after = (
        existing.auth_login_url,
        existing.auth_token_url,
        existing.keyset_url,
        existing.token_audience,
    )
    if after != before and existing.status == PlatformStatus.ACTIVE.value:
        existing.status = PlatformStatus.PENDING.value
    for deployment_id in sorted(set(deployment_ids)):
        add_deployment(session, existing, deployment_id)
    session.flush()
    return existing, False


def record_deployment(session: Session, platform_id: int, deployment_id: str) -> bool:
    """Record a deployment first seen in a launch of a platform that accepts new ones.

    Two first launches may race: the loser's insert fails inside its own savepoint and the
    launch goes on. Returns whether this call added it."""
    deployment_id = _check_text("deployment id", deployment_id, 255)
    try:
        with session.begin_nested():
            session.add(Deployment(platform_id=platform_id, deployment_id=deployment_id))
    except IntegrityError:
        return False
    return True


def set_accept_new_deployments(session: Session, platform: Platform, accept: bool) -> Platform:
    platform.accept_new_deployments = accept
    session.flush()
    return platform


def set_status(session: Session, platform: Platform, status: PlatformStatus) -> Platform:
    """Approve (active), disable or re-enable a registration. Launches see the change within
    the registration cache's ttl; the caller clears its own process's cache at once."""
    platform.status = status.value
    session.flush()
    return platform


def list_platforms(session: Session) -> list[Platform]:
    return list(
        session.scalars(
            select(Platform).options(selectinload(Platform.deployments)).order_by(Platform.id)
        )
    )


def find_by_issuer(session: Session, issuer: str) -> list[RegistrationInfo]:
    platforms = session.scalars(
        select(Platform)
        .where(Platform.issuer == issuer)
        .options(selectinload(Platform.deployments))
        .order_by(Platform.id)
    )
    return [RegistrationInfo.of(p) for p in platforms]


class RegistrationCache:
    """Per-process cache of registrations by issuer, kept ``ttl`` seconds.

    Launches look their registration up on every request; a changed registration is seen by
    every web process within ``ttl`` seconds (and at once by the process that changed it).
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, list[RegistrationInfo]]] = {}
        self._lock = threading.Lock()

    def by_issuer(self, session: Session, issuer: str) -> list[RegistrationInfo]:
        now = time.monotonic()
        entry = self._entries.get(issuer)
        if entry is not None and entry[0] > now:
            return entry[1]
        found = find_by_issuer(session, issuer)
        with self._lock:
            if len(self._entries) > 10_000:  # unknown issuers must not grow this forever
                self._entries.clear()
            self._entries[issuer] = (now + self.ttl, found)
        return found

    def find(self, session: Session, issuer: str, client_id: str) -> RegistrationInfo | None:
        for info in self.by_issuer(session, issuer):
            if info.client_id == client_id:
                return info
        return None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
