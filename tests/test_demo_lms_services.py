"""The demo LMS as a platform with LTI Advantage services: launches into its course carry the
roster (NRPS) and gradebook (AGS) claims, the first launch syncs the demo people into
Lifeline, and a completed tutoring session shows up as a participation score on the demo
gradebook. The demo app runs in this process with its demo settings (SQLite, in-process
Redis, inline jobs) behind a real threaded HTTP server, because Lifeline calls the demo LMS's
token, roster and gradebook endpoints over HTTP while it serves the launch."""

from __future__ import annotations

import html
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.serving import BaseWSGIServer, make_server

from lti_tool import create_app
from lti_tool.config import demo_settings
from lti_tool.courses import Person, recent_launches
from lti_tool.db import Database
from lti_tool.demo_lms.platform import CLIENT_ID, COURSE, USERS
from lti_tool.demo_lms.services import (
    AGS_CLAIM,
    ASSERTION_TYPE,
    LINEITEM_MEDIA,
    NRPS_CLAIM,
    NRPS_MEDIA,
    SCOPE_NRPS,
)
from lti_tool.lms import endpoints
from lti_tool.lms.models import CourseMember, CourseServices
from lti_tool.lti import keys
from lti_tool.lti.models import Platform
from lti_tool.migrate import upgrade
from tests.browser import free_port

FIELD = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
ACTION = re.compile(r'<form id="autopost" action="([^"]+)"')
QUESTION = "Why does my loop print FizzBuzz for every number instead of only multiples of 15?"
SETTINGS_FORM = {
    "skills": "",
    "cooldown_minutes": "0",
    "daily_cap": "0",
    "sla_minutes": "5",
    "step_away_minutes": "10",
}


@dataclass
class Demo:
    app: Flask
    base: str

    @property
    def db(self) -> Database:
        db: Database = self.app.extensions["lifeline"].db
        return db


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Demo]:
    monkeypatch.setenv("LIFELINE_INSTANCE_PATH", str(tmp_path / "instance"))
    port = free_port()
    settings = demo_settings("127.0.0.1", port)
    migrate_db = Database(settings.database_url)
    upgrade(migrate_db.engine)
    migrate_db.dispose()
    app = create_app(settings)
    server: BaseWSGIServer = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoints.recent.clear()
    recent_launches.clear()  # (process-wide memos of another test's database)
    try:
        yield Demo(app, f"http://127.0.0.1:{port}")
    finally:
        endpoints.recent.clear()
        recent_launches.clear()
        server.shutdown()
        server.server_close()
        app.extensions["lifeline"].db.dispose()


@dataclass
class Person_:
    client: FlaskClient
    base: str
    launch_id: str

    def csrf(self) -> str:
        with self.client.session_transaction(base_url=self.base) as session:
            token = session.get("csrf_token")
        if not token:
            page = self.client.get(f"/app/{self.launch_id}", base_url=self.base)
            match = re.search(r'name="csrf-token" content="([^"]+)"', page.get_data(as_text=True))
            assert match, "no CSRF token on the landing page"
            token = match.group(1)
        return str(token)

    def post(self, url: str, data: dict[str, Any] | None = None, json: bool = True) -> Any:
        headers = {"X-CSRF-Token": self.csrf()}
        if json:
            headers["Accept"] = "application/json"
        return self.client.post(url, data=data or {}, headers=headers, base_url=self.base)


def _autopost(body: str) -> tuple[str, dict[str, str]]:
    action = ACTION.search(body)
    assert action, body[:500]
    return html.unescape(action.group(1)), {
        name: html.unescape(value) for name, value in FIELD.findall(body)
    }


def launch(demo: Demo, user: str, lms_base: str | None = None) -> Person_:
    """The demo course page's launch, step by step as the browser's autoposts go (from the
    course page at ``lms_base``: by default on Lifeline's own address)."""
    client = demo.app.test_client()
    lms = lms_base or demo.base
    start = client.get(f"/demo/start?user={user}&exercise=ex1&storage=0", base_url=lms)
    assert start.status_code == 200, start.get_data(as_text=True)[:300]
    action, fields = _autopost(start.get_data(as_text=True))
    login = client.post(action, data=fields, base_url=demo.base)
    assert login.status_code in (302, 303), login.get_data(as_text=True)[:300]
    assert login.headers["Location"].startswith(lms + "/demo/auth")
    auth = client.get(login.headers["Location"], base_url=lms)
    assert auth.status_code == 200, auth.get_data(as_text=True)[:300]
    action, fields = _autopost(auth.get_data(as_text=True))
    claims = jwt.decode(fields["id_token"], options={"verify_signature": False})
    assert claims[NRPS_CLAIM]["service_versions"] == ["2.0"]
    assert claims[AGS_CLAIM]["lineitems"].startswith(lms + "/demo/ags/")
    landed = client.post(action, data=fields, base_url=demo.base)
    assert landed.status_code == 200, landed.get_data(as_text=True)[:500]
    with client.session_transaction(base_url=demo.base) as session:
        launch_id = session["launches"][-1]
    return Person_(client, demo.base, launch_id)


def _members(demo: Demo, issuer: str | None = None) -> dict[str, tuple[str, str, bool]]:
    with demo.db.transaction() as session:
        platform = session.scalars(
            select(Platform).where(Platform.issuer == (issuer or demo.base + "/demo"))
        ).one()
        rows = session.execute(
            select(Person.sub, CourseMember.name, CourseMember.email, CourseMember.is_tutor)
            .join(Person, Person.id == CourseMember.person_id)
            .where(Person.platform_id == platform.id)
        ).all()
        return {sub: (name, email, tutor) for sub, name, email, tutor in rows}


def test_a_launch_syncs_the_roster_and_a_session_lands_in_the_demo_gradebook(
    demo: Demo,
) -> None:
    started = time.monotonic()
    learner = launch(demo, "learner")
    assert time.monotonic() - started < 10
    assert _members(demo) == {
        USERS["learner"].sub: ("Ada Lovelace", "ada@example.edu", False),
        USERS["instructor"].sub: ("Grace Hopper", "grace@example.edu", False),
        USERS["tutor"].sub: ("Alan Turing", "alan@example.edu", True),
    }
    with demo.db.transaction() as session:
        services = session.scalars(select(CourseServices)).one()
        assert services.roster_error is None and services.roster_member_count == 3

    instructor = launch(demo, "instructor")
    form = dict(SETTINGS_FORM, report_participation="on")
    saved = instructor.post(f"/l/{instructor.launch_id}/course/settings", form, json=False)
    assert saved.status_code == 303, saved.get_data(as_text=True)[:300]

    with demo.db.transaction() as session:
        first_sync = session.scalars(select(CourseServices)).one().roster_synced_at
    synced = instructor.post(f"/l/{instructor.launch_id}/course/roster/sync", json=False)
    assert synced.status_code == 303, synced.get_data(as_text=True)[:300]
    with demo.db.transaction() as session:
        services = session.scalars(select(CourseServices)).one()
        assert services.roster_error is None
        assert first_sync is not None and services.roster_synced_at is not None
        assert services.roster_synced_at > first_sync  # "Sync roster now" ran, inline

    tutor = launch(demo, "tutor")
    asked = learner.post(f"/l/{learner.launch_id}/help", {"question": QUESTION})
    assert asked.status_code == 200, asked.get_data(as_text=True)
    request_id = int(asked.get_json()["request_id"])
    assert tutor.post(f"/tutor/requests/{request_id}/claim").status_code == 200
    resolved = tutor.post(f"/tutor/requests/{request_id}/resolve", {"outcome": "solved"})
    assert resolved.status_code == 200, resolved.get_data(as_text=True)

    book = requests.get(demo.base + "/demo/gradebook", timeout=10)
    assert book.status_code == 200
    page = book.text
    assert page.count('data-testid="lineitem"') == 1
    assert 'data-testid="lineitem-tag">lifeline-participation<' in page
    row = re.search(r'<tr data-testid="score" data-user-id="([^"]+)">(.*?)</tr>', page, re.S)
    assert row and row.group(1) == USERS["learner"].sub
    assert "Ada Lovelace" in row.group(2) and "Completed" in row.group(2)


def _assertion(demo: Demo, **changes: Any) -> str:
    with demo.db.transaction() as session:
        key = keys.signing_key(session)
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "aud": demo.base + "/demo/token",
        "iat": now,
        "exp": now + 300,
        "jti": secrets.token_urlsafe(16),
    }
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key.pem, algorithm="RS256", headers={"kid": key.kid})


def _token(demo: Demo, assertion: str, scope: str = SCOPE_NRPS) -> requests.Response:
    return requests.post(
        demo.base + "/demo/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
            "scope": scope,
        },
        timeout=10,
    )


def test_the_token_endpoint_refuses_bad_assertions(demo: Demo) -> None:
    requests.get(demo.base + "/demo/", timeout=10)  # registers the demo LMS, makes the key
    with demo.db.transaction() as session:
        kid = keys.signing_key(session).kid
    now = int(time.time())
    stranger = jwt.encode(  # the tool's kid, someone else's key
        {
            "iss": CLIENT_ID,
            "sub": CLIENT_ID,
            "aud": demo.base + "/demo/token",
            "iat": now,
            "exp": now + 300,
            "jti": "x",
        },
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        algorithm="RS256",
        headers={"kid": kid},
    )
    bad = {
        "wrong issuer": _assertion(demo, iss="someone-else", sub="someone-else"),
        "wrong audience": _assertion(demo, aud="https://elsewhere.example/token"),
        "expired": _assertion(demo, iat=int(time.time()) - 900, exp=int(time.time()) - 600),
        "no jti": _assertion(demo, jti=None),
        "not signed by the tool": stranger,
        "not a JWT": "garbage",
    }
    for why, assertion in bad.items():
        answer = _token(demo, assertion)
        assert 400 <= answer.status_code < 500, why
        assert answer.json()["error"] in {"invalid_client", "invalid_request"}, why
    good = _assertion(demo)
    assert _token(demo, good).status_code == 200
    replayed = _token(demo, good)
    assert replayed.status_code == 401 and "jti" in replayed.json()["error_description"]
    assert _token(demo, _assertion(demo), scope="openid").status_code == 400
    wrong_grant = requests.post(
        demo.base + "/demo/token", data={"grant_type": "password"}, timeout=10
    )
    assert wrong_grant.status_code == 400


def test_service_endpoints_require_a_bearer_token_with_the_scope(demo: Demo) -> None:
    requests.get(demo.base + "/demo/", timeout=10)
    course = COURSE["id"]
    nrps = f"{demo.base}/demo/nrps/{course}/memberships"
    lineitems = f"{demo.base}/demo/ags/{course}/lineitems"
    scores = lineitems + "/1/scores"
    for headers in ({}, {"Authorization": "Bearer made-up"}, {"Authorization": "Basic eDp5"}):
        assert requests.get(nrps, headers=headers, timeout=10).status_code == 401
        assert requests.get(lineitems, headers=headers, timeout=10).status_code == 401
        assert requests.post(lineitems, headers=headers, json={}, timeout=10).status_code == 401
        assert requests.post(scores, headers=headers, json={}, timeout=10).status_code == 401
    answer = _token(demo, _assertion(demo))
    assert answer.status_code == 200
    bearer = {"Authorization": "Bearer " + answer.json()["access_token"]}
    # an NRPS token is not a gradebook token
    assert requests.get(lineitems, headers=bearer, timeout=10).status_code == 403
    first = requests.get(nrps + "?limit=2", headers={**bearer, "Accept": NRPS_MEDIA}, timeout=10)
    assert first.status_code == 200 and len(first.json()["members"]) == 2
    assert first.headers["Content-Type"].startswith(NRPS_MEDIA)
    next_url = first.links["next"]["url"]
    second = requests.get(next_url, headers=bearer, timeout=10)
    assert len(second.json()["members"]) == 1 and "next" not in second.links
    people = {m["user_id"] for m in first.json()["members"] + second.json()["members"]}
    assert people == {user.sub for user in USERS.values()}
    other = f"{demo.base}/demo/nrps/another-course/memberships"
    assert requests.get(other, headers=bearer, timeout=10).status_code == 404
    # the gradebook scopes create line items; a wrong media type is refused
    ags = _token(
        demo,
        _assertion(demo),
        scope="https://purl.imsglobal.org/spec/lti-ags/scope/lineitem "
        "https://purl.imsglobal.org/spec/lti-ags/scope/score",
    )
    ags_bearer = {"Authorization": "Bearer " + ags.json()["access_token"]}
    created = requests.post(
        lineitems,
        data=b'{"label": "Demo", "scoreMaximum": 1, "tag": "t"}',
        headers={**ags_bearer, "Content-Type": LINEITEM_MEDIA},
        timeout=10,
    )
    assert created.status_code == 201 and created.json()["id"] == lineitems + "/1"
    assert requests.get(lineitems + "?tag=other", headers=ags_bearer, timeout=10).json() == []
    wrong_type = requests.post(scores, json={"userId": "u"}, headers=ags_bearer, timeout=10)
    assert wrong_type.status_code == 415
    page = requests.get(demo.base + "/demo/gradebook", timeout=10).text
    assert 'data-testid="lineitem-label">Demo<' in page
    assert 'data-testid="lineitem-no-scores"' in page


def test_the_course_on_the_other_site_has_its_own_roster_and_gradebook(demo: Demo) -> None:
    """The demo LMS on the other loopback name is another platform (issuer, token URL)."""
    twin = demo.base.replace("127.0.0.1", "localhost")
    launch(demo, "instructor", lms_base=twin)
    members = _members(demo, twin + "/demo")
    assert set(members) == {user.sub for user in USERS.values()}
    assert members[USERS["tutor"].sub][2] is True
    with demo.db.transaction() as session:
        home = session.scalars(select(Platform).where(Platform.issuer == demo.base + "/demo"))
        assert home.one_or_none() is None  # nothing launched from the home site
    assert (
        'data-testid="gradebook-empty"' in requests.get(twin + "/demo/gradebook", timeout=10).text
    )
