"""The admin page: accounts (CLI, argon2, lockout), sessions, and what admins do to platforms."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from werkzeug.test import TestResponse

from lti_tool.admin import accounts
from lti_tool.admin.models import AdminAccount, AdminSession, ToolSetting
from lti_tool.admin.settings import registration_status
from lti_tool.cli import main as lifeline
from lti_tool.db import utcnow
from lti_tool.lti import keys
from lti_tool.lti.models import Platform, PlatformStatus
from lti_tool.lti.registry import add_platform
from tests.conftest import BASE_URL, DATABASE_URL, REDIS_URL
from tests.helpers import launch_as
from tests.platform import JwksServer, TestPlatform

EMAIL = "ada@lifeline.example"
PASSWORD = "correct horse battery staple"


def csrf_of(client: FlaskClient) -> str:
    with client.session_transaction() as session:
        token = session.get("csrf_token")
    if not token:
        page = client.get("/admin/login").get_data(as_text=True)
        match = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert match
        token = match.group(1)
    return str(token)


@dataclass
class Browser:
    client: FlaskClient

    def post(self, url: str, data: dict[str, Any] | None = None, csrf: bool = True) -> TestResponse:
        form = dict(data or {})
        if csrf:
            form["csrf_token"] = csrf_of(self.client)
        return self.client.post(url, data=form)

    def get(self, url: str) -> TestResponse:
        return self.client.get(url)

    def login(self, email: str = EMAIL, password: str = PASSWORD) -> TestResponse:
        return self.post("/admin/login", {"email": email, "password": password})


def make_admin(app: Flask, email: str = EMAIL, password: str = PASSWORD) -> int:
    with app.extensions["lifeline"].db.transaction() as session:
        return accounts.create_admin(session, email, password).id


@pytest.fixture
def admin(app: Flask) -> Browser:
    make_admin(app)
    browser = Browser(app.test_client())
    response = browser.login()
    assert response.status_code == 303, response.get_data(as_text=True)
    return browser


def add(app: Flask, name: str, status: PlatformStatus, issuer: str = "") -> int:
    with app.extensions["lifeline"].db.transaction() as session:
        return add_platform(
            session,
            name=name,
            issuer=issuer or f"https://{name.lower().replace(' ', '-')}.example",
            client_id=f"client-{name}",
            auth_login_url="https://lms.example/auth",
            auth_token_url="https://lms.example/token",
            keyset_url="https://lms.example/jwks",
            deployment_ids=["dep-1"],
            status=status,
        ).id


def platform_row(app: Flask, platform_id: int) -> tuple[str, list[str]]:
    with app.extensions["lifeline"].db.transaction() as session:
        p = session.get(Platform, platform_id)
        assert p is not None
        return p.status, [d.deployment_id for d in p.deployments]


# -- signing in ---------------------------------------------------------------------------------


def test_login_sets_a_top_level_admin_cookie_and_logout_ends_the_session(app: Flask) -> None:
    make_admin(app)
    browser = Browser(app.test_client())
    assert browser.get("/admin/").headers["Location"].endswith("/admin/login")
    response = browser.login(EMAIL.upper(), PASSWORD)  # email case does not matter
    assert response.status_code == 303 and response.headers["Location"].endswith("/admin/")
    cookie = next(
        h for h in response.headers.getlist("Set-Cookie") if h.startswith("lifeline_admin=")
    )
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/admin" in cookie
    assert "Partitioned" not in cookie
    token = cookie.split("=", 1)[1].split(";", 1)[0]
    with app.extensions["lifeline"].db.transaction() as session:
        stored = session.scalars(select(AdminSession)).one()
        assert stored.token_hash != token and token not in stored.token_hash  # only a hash
        account = session.scalars(select(AdminAccount)).one()
        assert account.last_login_at is not None and account.password_hash.startswith("$argon2")
    page = browser.get("/admin/")
    assert page.status_code == 200 and EMAIL in page.get_data(as_text=True)
    assert browser.get("/admin/login").status_code == 303  # already signed in

    assert browser.post("/admin/logout").status_code == 303
    with app.extensions["lifeline"].db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(AdminSession)) == 0
    # The old cookie value, replayed, signs nobody in.
    replay = app.test_client()
    replay.set_cookie("lifeline_admin", token, path="/admin")
    assert replay.get("/admin/").status_code == 303
    assert (
        Browser(replay)
        .post("/admin/settings/registration", {"registration_status": "active"})
        .status_code
        == 403
    )


def test_wrong_passwords_lock_the_account(app: Flask) -> None:
    make_admin(app)
    browser = Browser(app.test_client())
    for _ in range(accounts.LOCK_AFTER - 1):
        wrong = browser.login(password="not the password at all")
        assert wrong.status_code == 401
        assert "That email and password do not match." in wrong.get_data(as_text=True)
    locked = browser.login(password="still not the password")
    assert locked.status_code == 429 and "locked until" in locked.get_data(as_text=True)
    # Locked: even the right password is refused, and no session is made.
    right = browser.login()
    assert right.status_code == 429
    with app.extensions["lifeline"].db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(AdminSession)) == 0
        session.execute(
            update(AdminAccount).values(locked_until=utcnow() - dt.timedelta(seconds=1))
        )
    assert browser.login().status_code == 303  # the lock expired
    with app.extensions["lifeline"].db.transaction() as session:
        account = session.scalars(select(AdminAccount)).one()
        assert account.failed_logins == 0 and account.locked_until is None


def test_unknown_emails_and_bad_input_get_the_same_answer(app: Flask) -> None:
    make_admin(app)
    browser = Browser(app.test_client())
    for email, password in (
        ("nobody@lifeline.example", PASSWORD),
        ("", ""),
        ("x" * 5000, "y" * 5000),
    ):
        response = browser.login(email, password)
        assert response.status_code == 401
        assert "That email and password do not match." in response.get_data(as_text=True)
    echoed = browser.login("<script>@x.y", "p").get_data(as_text=True)
    assert 'value="&lt;script&gt;@x.y"' in echoed and "<script>@" not in echoed
    nul = browser.post("/admin/login", {"email": "a\x00@b.c", "password": "x"})
    assert nul.status_code == 400 and "NUL" in nul.get_data(as_text=True)
    no_csrf = browser.post("/admin/login", {"email": EMAIL, "password": PASSWORD}, csrf=False)
    assert no_csrf.status_code == 400 and "CSRF" in no_csrf.get_data(as_text=True)


def test_many_failures_from_one_address_are_throttled(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lti_tool.web import admin as admin_views

    monkeypatch.setattr(admin_views, "IP_LIMIT", 3)
    make_admin(app)
    browser = Browser(app.test_client())
    for number in range(3):  # different emails: the account lockout never triggers
        assert browser.login(f"guess{number}@x.example", "guess").status_code == 401
    throttled = browser.login()
    assert throttled.status_code == 429 and "from this address" in throttled.get_data(as_text=True)


def test_an_idle_or_expired_session_ends(app: Flask, admin: Browser) -> None:
    assert admin.get("/admin/").status_code == 200
    with app.extensions["lifeline"].db.transaction() as session:
        session.execute(
            update(AdminSession).values(
                last_seen_at=utcnow() - accounts.SESSION_IDLE - dt.timedelta(seconds=1)
            )
        )
    assert admin.get("/admin/").status_code == 303
    assert admin.login().status_code == 303
    with app.extensions["lifeline"].db.transaction() as session:
        session.execute(update(AdminSession).values(expires_at=utcnow()))
    assert (
        admin.post("/admin/settings/registration", {"registration_status": "active"}).status_code
        == 403
    )


def test_lti_launches_and_tutors_never_reach_the_admin_page(
    app: Flask, platform: TestPlatform, admin: Browser
) -> None:
    pending = add(app, "Pending LMS", PlatformStatus.PENDING)
    instructor = launch_as(app, platform, "instructor", "ida")
    tutor = launch_as(app, platform, "tutor", "ta-tara")
    for who in (instructor, tutor):
        assert who.get("/admin/").status_code == 303
        for url, data in (
            (f"/admin/platforms/{pending}/status", {"action": "approve"}),
            (f"/admin/platforms/{pending}/deployments", {"deployment_id": "x"}),
            ("/admin/settings/registration", {"registration_status": "active"}),
            ("/admin/logout", {}),
        ):
            denied = who.post(url, data)
            assert denied.status_code == 403, (url, denied.status_code)
            assert "Lifeline's administrators" in denied.get_data(as_text=True)
    assert platform_row(app, pending) == ("pending", ["dep-1"])
    with app.extensions["lifeline"].db.transaction() as session:
        assert registration_status(session) is PlatformStatus.PENDING


# -- the page -----------------------------------------------------------------------------------


def test_the_page_lists_platforms_keys_and_the_setting(app: Flask, admin: Browser) -> None:
    active = add(app, "Canvas Prod", PlatformStatus.ACTIVE)
    add(app, "<b>Moodle</b> & co", PlatformStatus.PENDING)
    with app.extensions["lifeline"].db.transaction() as session:
        p = session.get(Platform, active)
        assert p is not None
        p.last_launch_at = dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.UTC)
        p.last_error = "unknown_deployment: Deployment 'dep-9' of 'Canvas Prod' is not registered"
        p.last_error_at = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)
        p.token_audience = "https://api.brightspace.com/auth/token"
        key = keys.generate_key(session)
        keys.rotate(session, 3600)
    html = admin.get("/admin/").get_data(as_text=True)
    assert html.count('data-testid="admin-platform"') == 2
    assert "Canvas Prod" in html and "client-Canvas Prod" in html
    assert "&lt;b&gt;Moodle&lt;/b&gt; &amp; co" in html and "<b>Moodle</b>" not in html
    assert "last launch: 2026-03-01 09:30 UTC" in html
    assert "last error (2026-03-02 10:00 UTC): unknown_deployment" in html
    assert "https://api.brightspace.com/auth/token" in html
    assert 'data-testid="admin-approve"' in html  # the pending one
    assert key.kid in html and 'data-state="published"' in html and 'data-state="signing"' in html
    assert f"{BASE_URL}/lti/register" in html
    assert 'value="pending" checked' in html


def test_approve_disable_enable(app: Flask, admin: Browser, jwks_server: JwksServer) -> None:
    lms = TestPlatform(jwks_server, issuer="https://pending-lms.example", client_id="pc")
    lms.register(app, status=PlatformStatus.PENDING)
    # Pending: the login is refused.
    first = app.test_client().post("/lti/login", data=lms.login_params())
    assert first.status_code == 403 and "An administrator must approve it" in first.get_data(
        as_text=True
    )
    approved = admin.post(f"/admin/platforms/{lms.platform_id}/status", {"action": "approve"})
    assert approved.status_code == 303
    assert "Approved: launches from Test LMS work now." in admin.get("/admin/").get_data(
        as_text=True
    )
    # The registration cache was cleared: the next launch works at once.
    assert lms.launch(app.test_client()).status_code == 200
    assert (
        admin.post(f"/admin/platforms/{lms.platform_id}/status", {"action": "disable"}).status_code
        == 303
    )
    assert platform_row(app, lms.platform_id)[0] == "disabled"
    off = app.test_client().post("/lti/login", data=lms.login_params())
    assert off.status_code == 403 and "disabled" in off.get_data(as_text=True)
    assert (
        admin.post(f"/admin/platforms/{lms.platform_id}/status", {"action": "enable"}).status_code
        == 303
    )
    assert lms.launch(app.test_client()).status_code == 200


@pytest.mark.parametrize(
    ("data", "status", "phrase"),
    [
        ({"action": "delete"}, 400, "Unknown action"),
        ({}, 400, "Unknown action"),
        ({"action": "enable"}, 409, "is pending, so it cannot be enabled"),
        ({"action": "approve\x00"}, 400, "NUL"),
    ],
)
def test_bad_platform_actions_change_nothing(
    app: Flask, admin: Browser, data: dict[str, str], status: int, phrase: str
) -> None:
    pending = add(app, "Pending LMS", PlatformStatus.PENDING)
    response = admin.post(f"/admin/platforms/{pending}/status", data)
    assert response.status_code == status and phrase in response.get_data(as_text=True)
    assert platform_row(app, pending)[0] == "pending"


def test_unknown_platforms_are_404(app: Flask, admin: Browser) -> None:
    for platform_id in (999, 2**31, 10**30):
        for url, data in (
            (f"/admin/platforms/{platform_id}/status", {"action": "approve"}),
            (f"/admin/platforms/{platform_id}/deployments", {"deployment_id": "x"}),
        ):
            assert admin.post(url, data).status_code == 404


def test_admin_adds_a_deployment_and_the_next_launch_uses_it(
    app: Flask, admin: Browser, jwks_server: JwksServer
) -> None:
    lms = TestPlatform(jwks_server, issuer="https://canvas-like.example", client_id="cc")
    lms.register(app, deployment_ids=[])
    refused = app.test_client().post("/lti/login", data=lms.login_params())
    assert refused.status_code == 403 and "deployment-1" in refused.get_data(as_text=True)
    url = f"/admin/platforms/{lms.platform_id}/deployments"
    assert admin.post(url, {"deployment_id": "  deployment-1 "}).status_code == 303
    notice = admin.get("/admin/").get_data(as_text=True)
    assert "now accepts deployment &#39;deployment-1&#39;" in notice
    assert admin.post(url, {"deployment_id": "deployment-1"}).status_code == 303
    assert "already accepted deployment" in admin.get("/admin/").get_data(as_text=True)
    assert platform_row(app, lms.platform_id)[1] == ["deployment-1"]
    assert lms.launch(app.test_client()).status_code == 200


def test_a_platform_that_accepts_new_deployments_records_them_on_first_launch(
    app: Flask, admin: Browser, jwks_server: JwksServer
) -> None:
    lms = TestPlatform(jwks_server, issuer="https://blackboard-like.example", client_id="bb")
    lms.register(app, deployment_ids=[])
    assert app.test_client().post("/lti/login", data=lms.login_params()).status_code == 403
    url = f"/admin/platforms/{lms.platform_id}/new-deployments"
    assert admin.post(url, {"accept": "maybe"}).status_code == 400
    assert admin.post(url, {"accept": "yes"}).status_code == 303
    page = admin.get("/admin/").get_data(as_text=True)
    assert "now records a new deployment on its first launch" in page
    assert "new deployments recorded on first launch" in page
    # Two first launches of the same new deployment: one row, both launches work.
    assert lms.launch(app.test_client()).status_code == 200
    assert lms.launch(app.test_client()).status_code == 200
    assert platform_row(app, lms.platform_id)[1] == ["deployment-1"]
    # Turned off again, a further unknown deployment is refused; the recorded one still works.
    assert admin.post(url, {"accept": "no"}).status_code == 303
    assert "only the deployments listed here" in admin.get("/admin/").get_data(as_text=True)
    other = app.test_client().post(
        "/lti/login", data={**lms.login_params(), "lti_deployment_id": "deployment-2"}
    )
    assert other.status_code == 403 and "deployment-2" in other.get_data(as_text=True)
    assert platform_row(app, lms.platform_id)[1] == ["deployment-1"]
    assert lms.launch(app.test_client()).status_code == 200


@pytest.mark.parametrize(
    ("value", "status", "phrase"),
    [("", 400, "must not be empty"), ("d" * 256, 400, "longer than 255"), ("a\x00", 400, "NUL")],
)
def test_bad_deployment_ids_are_refused(
    app: Flask, admin: Browser, value: str, status: int, phrase: str
) -> None:
    pid = add(app, "Some LMS", PlatformStatus.ACTIVE)
    response = admin.post(f"/admin/platforms/{pid}/deployments", {"deployment_id": value})
    assert response.status_code == status and phrase in response.get_data(as_text=True)
    assert platform_row(app, pid)[1] == ["dep-1"]


def test_the_registration_setting(app: Flask, admin: Browser) -> None:
    for bad in ("disabled", "", "ACTIVE", "x" * 500):
        response = admin.post("/admin/settings/registration", {"registration_status": bad})
        assert response.status_code == 400 and "New registrations can be" in response.get_data(
            as_text=True
        )
    with app.extensions["lifeline"].db.transaction() as session:
        assert session.get(ToolSetting, "registration_status") is None
        assert registration_status(session) is PlatformStatus.PENDING
    assert (
        admin.post("/admin/settings/registration", {"registration_status": "active"}).status_code
        == 303
    )
    page = admin.get("/admin/").get_data(as_text=True)
    assert "new dynamic registrations will be active at once" in page
    assert 'value="active" checked' in page
    with app.extensions["lifeline"].db.transaction() as session:
        assert registration_status(session) is PlatformStatus.ACTIVE
        assert session.get(ToolSetting, "registration_status").updated_by == EMAIL


def test_every_admin_form_needs_the_csrf_token(app: Flask, admin: Browser) -> None:
    pid = add(app, "Pending LMS", PlatformStatus.PENDING)
    for url, data in (
        (f"/admin/platforms/{pid}/status", {"action": "approve"}),
        (f"/admin/platforms/{pid}/deployments", {"deployment_id": "x"}),
        (f"/admin/platforms/{pid}/new-deployments", {"accept": "no"}),
        ("/admin/settings/registration", {"registration_status": "active"}),
        ("/admin/logout", {}),
    ):
        response = admin.post(url, data, csrf=False)
        assert response.status_code == 400 and "CSRF" in response.get_data(as_text=True)
    assert platform_row(app, pid) == ("pending", ["dep-1"])
    assert admin.get("/admin/").status_code == 200  # still signed in


# -- the CLI ------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(app: Flask) -> dict[str, str]:
    return {
        "LIFELINE_DATABASE_URL": DATABASE_URL,
        "LIFELINE_REDIS_URL": REDIS_URL,
        "LIFELINE_SECRET_KEY": "cli-secret-" + "k" * 32,
        "LIFELINE_BASE_URL": BASE_URL,
    }


def test_cli_adds_and_lists_admins(app: Flask, cli_env: dict[str, str]) -> None:
    runner = CliRunner()
    empty = runner.invoke(lifeline, ["admin", "list"], env=cli_env)
    assert empty.exit_code == 0 and "No administrators" in empty.output
    added = runner.invoke(
        lifeline,
        ["admin", "add", "Ada@Lifeline.example", "--password-stdin"],
        input=PASSWORD + "\n",
        env=cli_env,
    )
    assert added.exit_code == 0, added.output
    assert "ada@lifeline.example can now log in" in added.output and PASSWORD not in added.output
    prompted = runner.invoke(
        lifeline,
        ["admin", "add", "grace@lifeline.example"],
        input=f"{PASSWORD}\n{PASSWORD}\n",
        env=cli_env,
    )
    assert prompted.exit_code == 0, prompted.output
    listed = runner.invoke(lifeline, ["admin", "list"], env=cli_env)
    assert "#1 ada@lifeline.example  last login never" in listed.output
    assert "grace@lifeline.example" in listed.output and "argon2" not in listed.output
    # The account works on the page.
    assert Browser(app.test_client()).login("ada@lifeline.example", PASSWORD).status_code == 303


@pytest.mark.parametrize(
    ("args", "stdin", "phrase"),
    [
        (["admin", "add", "not-an-email", "--password-stdin"], PASSWORD, "is not an email"),
        (["admin", "add", "short@x.example", "--password-stdin"], "short", "at least 12"),
        (["admin", "add", EMAIL, "--password-stdin"], PASSWORD, "already an admin account"),
    ],
)
def test_cli_refuses_bad_admins(
    app: Flask, cli_env: dict[str, str], args: list[str], stdin: str, phrase: str
) -> None:
    make_admin(app)
    result = CliRunner().invoke(lifeline, args, input=stdin + "\n", env=cli_env)
    assert result.exit_code == 1 and phrase in result.output
    with app.extensions["lifeline"].db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(AdminAccount)) == 1
