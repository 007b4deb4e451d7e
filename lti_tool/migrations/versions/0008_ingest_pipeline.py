"""activity ingestion pipeline

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25 22:10:00
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

import lti_tool.db  # noqa: F401

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
