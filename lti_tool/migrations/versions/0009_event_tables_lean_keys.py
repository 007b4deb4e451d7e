"""event tables keep only the foreign keys that delete them: activity_events loses its
platform, course and raw-event keys, raw_events its platform key (PostgreSQL)

Every row of these tables is written by the ingestion consumer, thousands per second, and each
foreign key is a lookup per row (~5 µs of PostgreSQL each: 130 ms → 67 ms for 5,000
activity_events rows without the three dropped here). The dropped keys repeat what another
key already guarantees: an event's exercise belongs to its course and the course to its
platform, so deleting a platform or a course still deletes its events through
``exercise_id`` (and, for raw events, ``course_id``) ON DELETE CASCADE; raw events are never
deleted on their own. The consumer writes only ids it has just resolved from those tables.

SQLite (the demo) keeps its keys: it is not where throughput matters, and dropping one there
means rebuilding the table.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26 01:40:00
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

DROPPED = [
    (
        "activity_events",
        "fk_activity_events_platform_id_platforms",
        "platform_id",
        "platforms",
        "CASCADE",
    ),
    ("activity_events", "fk_activity_events_course_id_courses", "course_id", "courses", "CASCADE"),
    (
        "activity_events",
        "fk_activity_events_raw_event_id_raw_events",
        "raw_event_id",
        "raw_events",
        "SET NULL",
    ),
    ("raw_events", "fk_raw_events_platform_id_platforms", "platform_id", "platforms", "CASCADE"),
]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, name, _column, _target, _on_delete in DROPPED:
        op.drop_constraint(name, table, type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, name, column, target, on_delete in DROPPED:
        op.create_foreign_key(name, table, target, [column], ["id"], ondelete=on_delete)
