"""LMS services: roster memberships, course service endpoints, grade reports

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 22:10:00
"""

import sqlalchemy as sa
from alembic import op

import lti_tool.db

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "course_services",
        sa.Column("course_id", sa.Integer(), nullable=False),
        sa.Column("nrps_url", sa.String(length=2000), nullable=True),
        sa.Column("ags_lineitems_url", sa.String(length=2000), nullable=True),
        sa.Column("ags_scopes", sa.JSON(), nullable=False),
        sa.Column("ags_lineitem_url", sa.String(length=2000), nullable=True),
        sa.Column("report_participation", sa.Boolean(), nullable=False),
        sa.Column("canvas_course_id", sa.String(length=32), nullable=True),
        sa.Column("context_history", sa.JSON(), nullable=False),
        sa.Column("roster_differences_url", sa.String(length=2000), nullable=True),
        sa.Column("roster_requested_at", lti_tool.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("roster_synced_at", lti_tool.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("roster_member_count", sa.Integer(), nullable=True),
        sa.Column("roster_error", sa.Text(), nullable=True),
        sa.Column("roster_error_at", lti_tool.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", lti_tool.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["course_id"],
            ["courses.id"],
            name=op.f("fk_course_services_course_id_courses"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("course_id", name=op.f("pk_course_services")),
    )
    op.create_table(
        "course_members",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("course_id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("is_tutor", sa.Boolean(), nullable=False),
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("given_name", sa.String(length=500), nullable=False),
        sa.Column("family_name", sa.String(length=500), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("synced_at", lti_tool.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("left_at", lti_tool.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["course_id"],
            ["courses.id"],
            name=op.f("fk_course_members_course_id_courses"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["people.id"],
            name=op.f("fk_course_members_person_id_people"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_course_members")),
        sa.UniqueConstraint("course_id", "person_id", name="uq_course_members_course_person"),
    )
    op.create_table(
        "grade_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("course_id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("score_given", sa.Float(), nullable=True),
        sa.Column("lineitem_url", sa.String(length=2000), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("at", lti_tool.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["course_id"],
            ["courses.id"],
            name=op.f("fk_grade_reports_course_id_courses"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["people.id"],
            name=op.f("fk_grade_reports_person_id_people"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["help_requests.id"],
            name=op.f("fk_grade_reports_request_id_help_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_grade_reports")),
        sa.UniqueConstraint("request_id", name=op.f("uq_grade_reports_request_id")),
    )


def downgrade() -> None:
    op.drop_table("grade_reports")
    op.drop_table("course_members")
    op.drop_table("course_services")
