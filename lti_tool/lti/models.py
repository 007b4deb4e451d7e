"""Platform registrations, their deployments, and the tool's own signing keys."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import Boolean, ForeignKey, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..db import Base, UTCDateTime, utcnow


class PlatformStatus(enum.StrEnum):
    ACTIVE = "active"
    PENDING = "pending"  # registered dynamically, waiting for an admin's approval
    DISABLED = "disabled"


class Platform(Base):
    """One registration of Lifeline in an LMS: an (issuer, client_id) pair."""

    __tablename__ = "platforms"
    __table_args__ = (UniqueConstraint("issuer", "client_id", name="uq_platforms_issuer_client"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    issuer: Mapped[str] = mapped_column(String(500), index=True)
    client_id: Mapped[str] = mapped_column(String(255))
    auth_login_url: Mapped[str] = mapped_column(String(1000))
    auth_token_url: Mapped[str] = mapped_column(String(1000))
    keyset_url: Mapped[str] = mapped_column(String(1000))
    token_audience: Mapped[str | None] = mapped_column(String(1000), default=None)
    status: Mapped[str] = mapped_column(String(20), default=PlatformStatus.ACTIVE.value)
    # Trust any deployment of this registration: a deployment id Lifeline has not seen is
    # recorded on its first launch. Dynamic registrations start with it on, because Canvas and
    # Blackboard only create deployments when an admin installs the tool, after registering.
    accept_new_deployments: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_launch_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    last_error_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)

    deployments: Mapped[list[Deployment]] = relationship(
        back_populates="platform", cascade="all, delete-orphan", order_by="Deployment.id"
    )


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        UniqueConstraint("platform_id", "deployment_id", name="uq_deployments_platform_dep"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    platform_id: Mapped[int] = mapped_column(ForeignKey("platforms.id", ondelete="CASCADE"))
    deployment_id: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    platform: Mapped[Platform] = relationship(back_populates="deployments")


class ToolKey(Base):
    """An RSA key pair of the tool's. The newest key without ``retire_after`` signs; every key
    whose ``retire_after`` is unset or still in the future is published on /lti/jwks."""

    __tablename__ = "tool_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    kid: Mapped[str] = mapped_column(String(64), unique=True)
    private_pem: Mapped[str] = mapped_column(Text)
    public_jwk: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    retire_after: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
