"""What a learner's launch page shows of the queue, read in one query on the hot path: the
tutors available now (as effective_availability counts them) and the learner's own request."""

from __future__ import annotations

import datetime as dt
import re

from flask import Flask
from sqlalchemy import update

from lti_tool.tutors.models import Tutor
from tests.helpers import launch_as
from tests.platform import CLAIM, ROLE_LEARNER, TestPlatform

QUESTION = "My recursion never stops and I do not see why the base case is missed."


def _landing(app: Flask, platform: TestPlatform, sub: str, context_id: str = "course-1") -> str:
    client = app.test_client()
    response = platform.launch(
        client,
        sub=sub,
        **{
            CLAIM + "roles": [ROLE_LEARNER],
            CLAIM + "context": {"id": context_id, "title": f"Course {context_id}"},
        },
    )
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return response.get_data(as_text=True)


def _status(html: str) -> str:
    match = re.search(r'data-testid="queue-status">([^<]*)<', html)
    assert match, html[:1000]
    return match.group(1)


def _last_seen(app: Flask, seconds_ago: int) -> None:
    with app.extensions["lifeline"].db.transaction() as session:
        seen = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)
        session.execute(update(Tutor).values(last_seen_at=seen))


def test_learner_landing_counts_tutors_available_now(app: Flask, platform: TestPlatform) -> None:
    assert _status(_landing(app, platform, "alice")) == "0 tutors available now."
    tara = launch_as(app, platform, "tutor", "ta-tara", "Tara")  # joins the course pool
    assert _status(_landing(app, platform, "alice")) == "0 tutors available now."  # offline
    assert tara.post("/tutor/availability", {"availability": "available"}).status_code == 200
    assert _status(_landing(app, platform, "alice")) == "1 tutor available now."
    _last_seen(app, 50)
    assert _status(_landing(app, platform, "alice")) == "1 tutor available now."
    _last_seen(app, 61)  # the dashboard stopped sending heartbeats: away
    assert _status(_landing(app, platform, "alice")) == "0 tutors available now."
    # A tutor of another course's pool is not counted here.
    assert _status(_landing(app, platform, "bob", "course-2")) == "0 tutors available now."


def test_learner_landing_shows_only_their_own_open_request(
    app: Flask, platform: TestPlatform
) -> None:
    alice = launch_as(app, platform, "learner", "alice")
    response = alice.post(f"/l/{alice.launch_id}/help", {"question": QUESTION})
    assert response.status_code == 200, response.get_data(as_text=True)
    request_id = int(response.get_json()["request_id"])

    mine = _landing(app, platform, "alice")
    assert 'data-testid="open-request"' in mine
    assert f"/help/{request_id}" in mine
    assert _status(mine) == "You are in line for a tutor."
    for other in (_landing(app, platform, "bob"), _landing(app, platform, "alice", "course-2")):
        assert 'data-testid="open-request"' not in other
        assert 'data-testid="get-tutor"' in other
