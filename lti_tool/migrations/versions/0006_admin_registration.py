"""admin accounts, tool settings, dynamic registration records

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 22:10:00
"""

import sqlalchemy as sa
from alembic import op

import lti_tool.db

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "platforms",
        sa.Column(
            "accept_new_deployments", sa.Boolean(), server_default=sa.false(), nullable=False
        ),
    )
    op.create_table(
        "admin_accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=300), nullable=False),
        sa.Column("created_at", lti_tool.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", lti_tool.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until", lti_tool.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_accounts")),
        sa.UniqueConstraint("email", name=op.f("uq_admin_accounts_email")),
    )
    op.create_table(
        "admin_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", lti_tool.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", lti_tool.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", lti_tool.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["admin_accounts.id"],
            name=op.f("fk_admin_sessions_account_id_admin_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_admin_sessions_token_hash")),
    )
    op.create_index(
        op.f("ix_admin_sessions_account_id"), "admin_sessions", ["account_id"], unique=False
    )
    op.create_table(
        "tool_settings",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", lti_tool.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=320), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_tool_settings")),
    )


def downgrade() -> None:
    op.drop_column("platforms", "accept_new_deployments")
    op.drop_table("tool_settings")
    op.drop_index(op.f("ix_admin_sessions_account_id"), table_name="admin_sessions")
    op.drop_table("admin_sessions")
    op.drop_table("admin_accounts")
