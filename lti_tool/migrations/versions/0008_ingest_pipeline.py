"""activity ingestion pipeline: dead letters of the ingestion stream, and (PostgreSQL) the
function that adds a batch's peer statistics to the stored ones in one UPDATE

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25 22:10:00
"""

import sqlalchemy as sa
from alembic import op

import lti_tool.db

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


# lifeline_json_add(a, b): ``a`` with ``b`` added: numbers summed, objects merged key by key
# (recursively), anything else taken from ``b``. ``detection.live.DbPeers.merge`` uses it to
# apply a batch's differences to the peer statistics: UPDATE … SET stats = stats + delta.
JSON_ADD = """
CREATE OR REPLACE FUNCTION lifeline_json_add(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF a IS NULL OR jsonb_typeof(a) <> 'object' OR jsonb_typeof(b) <> 'object' THEN
    RETURN b;
  END IF;
  RETURN (
    SELECT coalesce(jsonb_object_agg(k, CASE
      WHEN NOT (b ? k) THEN a -> k
      WHEN NOT (a ? k) THEN b -> k
      WHEN jsonb_typeof(a -> k) = 'number' AND jsonb_typeof(b -> k) = 'number'
        THEN to_jsonb((a ->> k)::numeric + (b ->> k)::numeric)
      WHEN jsonb_typeof(a -> k) = 'object' AND jsonb_typeof(b -> k) = 'object'
        THEN lifeline_json_add(a -> k, b -> k)
      ELSE b -> k END), '{}'::jsonb)
    FROM (SELECT jsonb_object_keys(a) AS k UNION SELECT jsonb_object_keys(b)) AS keys
  );
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(JSON_ADD)
    op.create_table(
        "ingest_dead_letters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stream_id", sa.String(length=64), nullable=False),
        sa.Column("course_id", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("created_at", lti_tool.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingest_dead_letters")),
    )


def downgrade() -> None:
    op.drop_table("ingest_dead_letters")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS lifeline_json_add(jsonb, jsonb)")
