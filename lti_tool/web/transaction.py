"""One place owns the request's database transaction: commit on success, roll back otherwise."""

from __future__ import annotations

from flask import Response, g
from sqlalchemy.orm import Session

from ..services import current_services


def db_session() -> Session:
    session: Session | None = g.get("db_session")
    if session is None:
        session = g.db_session = current_services().db.sessionmaker()
    return session


def commit_on_success(response: Response) -> Response:
    session: Session | None = g.get("db_session")
    if session is not None:
        if response.status_code < 400:
            session.commit()
        else:
            session.rollback()
    return response


def close_db_session(exc: BaseException | None) -> None:
    session: Session | None = g.pop("db_session", None)
    if session is not None:
        if exc is not None:
            session.rollback()
        session.close()
