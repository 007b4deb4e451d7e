"""Imports every model module so the metadata is complete (for Alembic and schema checks)."""

from __future__ import annotations

from sqlalchemy import MetaData


def metadata() -> MetaData:
    from . import courses  # noqa: F401
    from .activity import model as activity_model  # noqa: F401
    from .activity import models as activity_ingest_models  # noqa: F401
    from .admin import models as admin_models  # noqa: F401
    from .db import Base
    from .detection import models as detection_models  # noqa: F401
    from .help import models as help_models  # noqa: F401
    from .lms import models as lms_models  # noqa: F401
    from .lti import models  # noqa: F401
    from .tutors import models as tutor_models  # noqa: F401

    return Base.metadata
