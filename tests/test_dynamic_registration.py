"""LTI Dynamic Registration end to end, against LMSs served over real HTTP on 127.0.0.1.

Each test opens ``/lti/register`` as the LMS would, presses Register, and checks what the
platform received, what Lifeline stored (and, for every failure, that it stored nothing),
and what the admin in front of the LMS reads.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from lti_tool.admin.settings import set_registration_status
from lti_tool.config import Settings
from lti_tool.lti import dynamic_registration as dynreg
from lti_tool.lti.models import Deployment, Platform, PlatformStatus
from lti_tool.lti.registry import set_status
from tests.platform import JwksServer, TestPlatform
from tests.registration_platform import (
    AGS_LINEITEM,
    AGS_RESULT,
    AGS_SCORE,
    NRPS,
    TOOL_CONFIGURATION,
    RegistrationPlatform,
    RegistrationServer,
    closed_port_url,
)

TIMEOUT = 1.0  # http_timeout for these tests: the slow platform takes longer
CLOSE = "org.imsglobal.lti.close"
RESOURCE, DEEP = "LtiResourceLinkRequest", "LtiDeepLinkingRequest"


@pytest.fixture(scope="module")
def lms_server() -> Iterator[RegistrationServer]:
    server = RegistrationServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_overrides(http_timeout=TIMEOUT)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def handle_of(response: TestResponse) -> str:
    match = re.search(r'name="handle" value="([^"]+)"', response.get_data(as_text=True))
    assert match, response.get_data(as_text=True)[:800]
    return match.group(1)


def open_register(client: FlaskClient, lms: RegistrationPlatform, **kwargs: Any) -> TestResponse:
    return client.get(lms.start_url(**kwargs))


def press_register(client: FlaskClient, handle: str, name: str | None = None) -> TestResponse:
    data = {"handle": handle}
    if name is not None:
        data["name"] = name
    return client.post("/lti/register/confirm", data=data)


def register(client: FlaskClient, lms: RegistrationPlatform, name: str = "") -> TestResponse:
    page = open_register(client, lms)
    assert page.status_code == 200, page.get_data(as_text=True)[:800]
    return press_register(client, handle_of(page), name or f"{lms.name} LMS")


def platforms(app: Flask) -> list[dict[str, Any]]:
    with app.extensions["lifeline"].db.transaction() as session:
        return [
            {
                "name": p.name,
                "issuer": p.issuer,
                "client_id": p.client_id,
                "auth": p.auth_login_url,
                "token": p.auth_token_url,
                "keys": p.keyset_url,
                "audience": p.token_audience,
                "status": p.status,
                "deployments": [d.deployment_id for d in p.deployments],
            }
            for p in session.scalars(select(Platform).order_by(Platform.id))
        ]


def nothing_stored(app: Flask) -> None:
    with app.extensions["lifeline"].db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Platform)) == 0
        assert session.scalar(select(func.count()).select_from(Deployment)) == 0


def assert_problem(response: TestResponse, code: str, *phrases: str, status: int = 400) -> str:
    html = response.get_data(as_text=True)
    assert response.status_code == status, (response.status_code, html[:800])
    assert f'data-code="{code}"' in html, html[:800]
    for phrase in phrases:
        assert phrase in html, (phrase, html[:1200])
    assert CLOSE in html  # the admin can still close the LMS's dialog
    return html


def set_approval(app: Flask, status: PlatformStatus) -> None:
    with app.extensions["lifeline"].db.transaction() as session:
        set_registration_status(session, status.value, by="test")


# -- each LMS as it really behaves ------------------------------------------------------------


def test_moodle_registers_pending_with_its_deployment_and_string_messages(
    app: Flask, client: FlaskClient, lms_server: RegistrationServer
) -> None:
    lms = lms_server.moodle(unique("moodle"))
    page = open_register(client, lms)
    html = page.get_data(as_text=True)
    assert page.status_code == 200, html[:800]
    assert 'data-testid="register-confirm"' in html and 'data-product="moodle"' in html
    assert "Moodle 4.3" in html and lms.issuer in html
    assert "An administrator must approve" not in html  # that is for launches
    assert "a Lifeline administrator must approve this LMS" in html
    assert lms.token not in html  # the registration token stays on the server
    nothing_stored(app)  # nothing until Register is pressed
    assert [s.method for s in lms.seen] == ["GET"]
    assert lms.seen[0].headers["authorization"] == f"Bearer {lms.token}"

    done = press_register(client, handle_of(page), "Moodle at Example U")
    body = done.get_data(as_text=True)
    assert done.status_code == 200, body[:800]
    assert 'data-testid="register-done"' in body and 'data-status="pending"' in body
    assert 'data-testid="done-pending"' in body
    # The close message, to the window that opened us or the frame around us.
    assert "window.opener || window.parent" in body
    assert 'postMessage({subject: "org.imsglobal.lti.close"}, "*")' in body

    [stored] = platforms(app)
    assert stored == {
        "name": "Moodle at Example U",
        "issuer": lms.issuer,
        "client_id": f"{lms.name}-client-1",
        "auth": lms.base + "/auth",
        "token": lms.base + "/token",
        "keys": lms.base + "/jwks",
        "audience": None,
        "status": "pending",
        "deployments": ["7"],
    }
    [posted] = lms.registrations()
    assert posted.headers["authorization"] == f"Bearer {lms.token}"
    assert posted.headers["content-type"] == "application/json"
    request = posted.body
    assert request["application_type"] == "web"
    assert request["response_types"] == ["id_token"]
    assert request["grant_types"] == ["implicit", "client_credentials"]
    assert request["initiate_login_uri"] == "https://lifeline.test/lti/login"
    assert request["redirect_uris"] == ["https://lifeline.test/lti/launch"]
    assert request["jwks_uri"] == "https://lifeline.test/lti/jwks"
    assert request["logo_uri"] == "https://lifeline.test/static/icon.svg"
    assert request["client_name"] == "Lifeline"
    assert request["token_endpoint_auth_method"] == "private_key_jwt"
    assert set(request["scope"].split()) == {NRPS, AGS_LINEITEM, AGS_RESULT, AGS_SCORE}
    lti = request[TOOL_CONFIGURATION]
    assert lti["domain"] == "lifeline.test"
    assert lti["target_link_uri"] == "https://lifeline.test/lti/launch"
    assert lti["claims"] == ["iss", "sub", "name", "given_name", "family_name", "email"]
    # Moodle lists only Context.id.history among Lifeline's variables: the other is left out.
    assert lti["custom_parameters"] == {"context_id_history": "$Context.id.history"}
    messages = {m["type"]: m for m in lti["messages"]}
    assert set(messages) == {RESOURCE, DEEP}
    assert messages[DEEP]["placements"] == ["ContentArea"]  # Moodle lists none: the spec's
    assert "placements" not in messages[RESOURCE]
    assert all(m["target_link_uri"] == "https://lifeline.test/lti/launch" for m in lti["messages"])
    assert not any(k.startswith("https://canvas.instructure.com/") for k in lti)


def test_canvas_needs_the_token_on_the_configuration_and_gets_its_extensions(
    app: Flask, client: FlaskClient, lms_server: RegistrationServer
) -> None:
    lms = lms_server.canvas(unique("canvas"))
    # Without the token Canvas refuses its configuration; Lifeline says what happened.
    refused = open_register(client, lms, token=None)
    assert_problem(refused, "registration_token_rejected", "HTTP 401", "carried none")
    assert "authorization" not in lms.seen[-1].headers

    page = open_register(client, lms)
    html = page.get_data(as_text=True)
    assert page.status_code == 200, html[:800]
    assert 'value="Canvas (Test University)"' in html  # suggested name from the account
    assert lms.seen[-1].headers["authorization"] == f"Bearer {lms.token}"
    done = press_register(client, handle_of(page), "Canvas (Test University)")
    body = done.get_data(as_text=True)
    assert done.status_code == 200, body[:800]
    assert 'data-testid="done-canvas"' in body and 'data-testid="done-no-deployment"' in body

    [stored] = platforms(app)
    assert stored["client_id"] == f"{lms.name}-client-1" and stored["deployments"] == []
    request = lms.registrations()[0].body
    # Only the scopes Lifeline uses, and only those Canvas offers (it offers more).
    assert set(request["scope"].split()) == {NRPS, AGS_LINEITEM, AGS_RESULT, AGS_SCORE}
    lti = request[TOOL_CONFIGURATION]
    assert lti["https://canvas.instructure.com/lti/privacy_level"] == "public"
    messages = {m["type"]: m for m in lti["messages"]}
    assert messages[RESOURCE]["placements"] == ["course_navigation"]
    assert (
        messages[RESOURCE]["https://canvas.instructure.com/lti/course_navigation/default_enabled"]
        is False
    )
    assert messages[DEEP]["placements"] == ["link_selection", "assignment_selection"]
    assert lti["custom_parameters"] == {
        "context_id_history": "$Context.id.history",
        "canvas_course_id": "$Canvas.course.id",
        "canvas_user_id": "$Canvas.user.id",
    }


def test_brightspace_keeps_its_token_audience_and_says_to_enable_the_tool(
    app: Flask, client: FlaskClient, lms_server: RegistrationServer
) -> None:
    lms = lms_server.brightspace(unique("d2l"))
    done = register(client, lms, "Brightspace")
    body = done.get_data(as_text=True)
    assert done.status_code == 200, body[:800]
    assert 'data-testid="done-brightspace"' in body and "disabled" in body
    # Brightspace sends no registration token: no Authorization header at all.
    assert all("authorization" not in s.headers for s in lms.seen)
    [stored] = platforms(app)
    assert stored["audience"] == "https://api.brightspace.com/auth/token"
    assert stored["token"] == lms.base + "/token"
    assert stored["deployments"] == ["d2l-deployment-1"]


def test_blackboard_central_issuer_gets_a_client_id_per_registration(
    app: Flask, client: FlaskClient, lms_server: RegistrationServer, jwks_server: JwksServer
) -> None:
    set_approval(app, PlatformStatus.ACTIVE)
    lms = lms_server.blackboard(unique("bb"))
    for school in ("School A", "School B"):
        done = register(client, lms, school)
        assert done.status_code == 200, done.get_data(as_text=True)[:800]
        assert 'data-testid="done-blackboard"' in done.get_data(as_text=True)
    rows = platforms(app)
    assert [(r["name"], r["issuer"], r["client_id"]) for r in rows] == [
        ("School A", lms.issuer, "bb-client-1"),
        ("School B", lms.issuer, "bb-client-2"),
    ]
    # Each registration launches as itself once its Learn admin deployed the tool.
    with app.extensions["lifeline"].db.transaction() as session:
        for number, p in enumerate(session.scalars(select(Platform).order_by(Platform.id)), 1):
            p.deployments.append(Deployment(deployment_id=f"bb-deployment-{number}"))
    app.extensions["lifeline"].registrations.clear()
    for number in (1, 2):
        launcher = TestPlatform(
            jwks_server,
            issuer=lms.issuer,
            client_id=f"bb-client-{number}",
            deployment_id=f"bb-deployment-{number}",
        )
        response = launcher.launch(app.test_client(), sub=f"learner-{number}")
        assert response.status_code == 200, response.get_data(as_text=True)[:800]
    with app.extensions["lifeline"].db.transaction() as session:
        assert all(p.last_launch_at for p in session.scalars(select(Platform)))


def test_scopes_are_limited_to_those_the_platform_offers(
    app: Flask, client: FlaskClient, lms_server: RegistrationServer
) -> None:
    only_roster = lms_server.moodle(unique("roster"))
    only_roster.scopes_supported = [NRPS, "openid"]
    page = open_register(client, only_roster)
    assert page.get_data(as_text=True).count('data-testid="register-scope"') == 1
    assert press_register(client, handle_of(page), "Roster only").status_code == 200
    assert only_roster.registrations()[0].body["scope"] == NRPS

    silent = lms_server.moodle(unique("silent"))
    silent.scopes_supported = None  # says nothing: ask for what Lifeline uses
    assert register(client, silent).status_code == 200
    assert set(silent.registrations()[0].body["scope"].split()) == {
        NRPS,
        AGS_LINEITEM,
        AGS_RESULT,
        AGS_SCORE,
    }


def test_a_platform_without_deep_linking_is_not_asked_for_it(
    client: FlaskClient, lms_server: RegistrationServer
) -> None:
    lms = lms_server.moodle(unique("nodl"))
    lms.platform_overrides = {"messages_supported": [{"type": RESOURCE}]}
    assert register(client, lms).status_code == 200
    messages = lms.registrations()[0].body[TOOL_CONFIGURATION]["messages"]
    assert [m["type"] for m in messages] == [RESOURCE]


# -- approval and the first launch ------------------------------------------------------------


def test_after_an_active_registration_a_launch_from_that_platform_works(
    app: Flask, client: FlaskClient, lms_server: RegistrationServer, jwks_server: JwksServer
) -> None:
    set_approval(app, PlatformStatus.ACTIVE)
    lms = lms_server.moodle(unique("live"))
    done = register(client, lms, "Live Moodle")
    assert 'data-status="active"' in done.get_data(as_text=True)
    assert 'data-testid="done-pending"' not in done.get_data(as_text=True)
    [stored] = platforms(app)
    launcher = TestPlatform(
        jwks_server, issuer=lms.issuer, client_id=stored["client_id"], deployment_id="7"
    )
    landing = launcher.launch(app.test_client())
    assert landing.status_code == 200, landing.get_data(as_text=True)[:800]
    assert 'data-testid="learner-home"' in landing.get_data(as_text=True)
    assert any(s.path == "/jwks" for s in lms.seen)  # verified with the registered keyset


def test_a_pending_registration_refuses_launches_until_approved(
    app: Flask, client: FlaskClient, lms_server: RegistrationServer, jwks_server: JwksServer
) -> None:
    lms = lms_server.moodle(unique("wait"))
    assert register(client, lms).status_code == 200
    [stored] = platforms(app)
    assert stored["status"] == "pending"
    launcher = TestPlatform(
        jwks_server, issuer=lms.issuer, client_id=stored["client_id"], deployment_id="7"
    )
    refused = app.test_client().post("/lti/login", data=launcher.login_params())
    assert refused.status_code == 403
    assert "An administrator must approve it" in refused.get_data(as_text=True)


def test_registering_the_same_client_again_updates_it_and_keeps_its_status(
    app: Flask, client: FlaskClient, lms_server: RegistrationServer
) -> None:
    lms = lms_server.moodle(unique("again"))
    lms.register_body = json.dumps(
        {"client_id": "fixed-client", TOOL_CONFIGURATION: {"deployment_id": "1"}}
    ).encode()
    assert register(client, lms, "First name").status_code == 200
    with app.extensions["lifeline"].db.transaction() as session:
        row = session.scalars(select(Platform)).one()
        set_status(session, row, PlatformStatus.DISABLED)
    lms.register_body = json.dumps(
        {"client_id": "fixed-client", TOOL_CONFIGURATION: {"deployment_id": "2"}}
    ).encode()
    again = register(client, lms, "Second name")
    body = again.get_data(as_text=True)
    assert again.status_code == 200, body[:800]
    assert "registration in Moodle is updated" in body and 'data-testid="done-disabled"' in body
    [stored] = platforms(app)
    assert stored["name"] == "First name" and stored["status"] == "disabled"
    assert stored["deployments"] == ["1", "2"]


# -- the configuration is unusable: a clear 400, and nothing stored, nothing registered -------


def test_missing_or_wrong_openid_configuration_parameter(client: FlaskClient, app: Flask) -> None:
    assert_problem(
        client.get("/lti/register"), "missing_openid_configuration", "no openid_configuration"
    )
    for url, phrase in (
        ("ftp://lms.example.edu/config", "not an absolute http(s) URL"),
        ("http://lms.example.edu/config", "must use https"),
        ("https://lms.example.edu/" + "x" * 2100, "too long"),
        ("https://lms.example.edu:99999/config", "is not a valid URL"),
        ("http://[::1/config", "is not a valid URL"),
    ):
        response = client.get("/lti/register", query_string={"openid_configuration": url})
        assert_problem(response, "invalid_openid_configuration", phrase)
    bad_token = client.get(
        "/lti/register",
        query_string={
            "openid_configuration": "https://lms.example.edu/c",
            "registration_token": "a b",
        },
    )
    assert_problem(bad_token, "invalid_registration_token", "not a token")
    nothing_stored(app)


def test_configuration_unreachable(client: FlaskClient, app: Flask) -> None:
    response = client.get("/lti/register", query_string={"openid_configuration": closed_port_url()})
    assert_problem(response, "configuration_unreachable", "could not connect")
    nothing_stored(app)


def test_configuration_on_a_link_local_address_is_never_fetched(client: FlaskClient) -> None:
    url = "https://169.254.169.254/latest/meta-data"
    response = client.get("/lti/register", query_string={"openid_configuration": url})
    assert_problem(response, "configuration_forbidden_address", "169.254.169.254")


def test_configuration_too_slow(
    app: Flask, client: FlaskClient, lms_server: RegistrationServer
) -> None:
    lms = lms_server.moodle(unique("slow"), config_delay=TIMEOUT * 3)
    response = open_register(client, lms)
    assert_problem(response, "configuration_timeout", "did not answer within 1 seconds")
    nothing_stored(app)


@pytest.mark.parametrize(
    ("change", "code", "phrase"),
    [
        (
            {"config_body": b"<html>Moodle maintenance</html>"},
            "configuration_not_json",
            "did not answer with JSON",
        ),
        ({"config_body": b"[1, 2]"}, "configuration_not_object", "JSON object"),
        ({"config_status": 500}, "configuration_http_error", "answered HTTP 500"),
        ({"config_body": b"{" + b" " * 300_000 + b"}"}, "configuration_too_large", "more than"),
        (
            {"issuer_override": "https://lms.example.edu"},
            "issuer_mismatch",
            "must be on the issuer",
        ),
        (
            {"config_overrides": {"authorization_endpoint": None}},
            "configuration_missing_authorization_endpoint",
            "authorization_endpoint",
        ),
        (
            {"config_overrides": {"token_endpoint": None}},
            "configuration_missing_token_endpoint",
            "token_endpoint",
        ),
        ({"config_overrides": {"jwks_uri": None}}, "configuration_missing_jwks_uri", "jwks_uri"),
        (
            {"config_overrides": {"registration_endpoint": None}},
            "configuration_missing_registration_endpoint",
            "registration_endpoint",
        ),
        (
            {"config_overrides": {"jwks_uri": "http://lms.example.edu/jwks"}},
            "configuration_invalid_jwks_uri",
            "must use https",
        ),
        (
            {"config_overrides": {"registration_endpoint": "https://elsewhere.example/reg"}},
            "configuration_invalid_registration_endpoint",
            "not on the issuer",
        ),
        (
            {
                "config_overrides": {
                    "token_endpoint_auth_methods_supported": ["client_secret_basic"]
                }
            },
            "configuration_no_private_key_jwt",
            "private_key_jwt",
        ),
        (
            {
                "config_overrides": {
                    "https://purl.imsglobal.org/spec/lti-platform-configuration": None
                }
            },
            "configuration_missing_platform_configuration",
            "not an LTI platform",
        ),
        (
            {"platform_overrides": {"product_family_code": None}},
            "configuration_missing_product_family_code",
            "product_family_code",
        ),
        (
            {"platform_overrides": {"messages_supported": []}},
            "configuration_missing_messages_supported",
            "messages_supported",
        ),
        (
            {"platform_overrides": {"messages_supported": [42]}},
            "configuration_invalid_messages_supported",
            "Entry 1",
        ),
        (
            {"config_overrides": {"scopes_supported": "everything"}},
            "configuration_invalid_scopes_supported",
            "not a list",
        ),
    ],
)
def test_unusable_configuration(
    app: Flask,
    client: FlaskClient,
    lms_server: RegistrationServer,
    change: dict[str, Any],
    code: str,
    phrase: str,
) -> None:
    lms = lms_server.moodle(unique("bad"), **change)
    assert_problem(open_register(client, lms), code, phrase)
    assert lms.registrations() == []
    nothing_stored(app)


def test_errors_are_json_for_json_clients(client: FlaskClient) -> None:
    response = client.get("/lti/register", headers={"Accept": "application/json"})
    assert response.status_code == 400
    assert response.get_json()["error"] == "missing_openid_configuration"


# -- the registration fails: a clear 400, nothing stored --------------------------------------


def test_registration_refused_shows_the_platforms_words_escaped(
    app: Flask, client: FlaskClient, lms_server: RegistrationServer
) -> None:
    lms = lms_server.moodle(
        unique("refuse"),
        register_status=400,
        register_body=json.dumps(
            {
                "error": "invalid_redirect_uri",
                "error_description": "<script>alert('x')</script> redirect not allowed",
            }
        ).encode(),
    )
    html = assert_problem(
        register(client, lms), "registration_refused", "HTTP 400", "invalid_redirect_uri"
    )
    assert "<script>alert" not in html and "&lt;script&gt;" not in html  # markup dropped
    assert "alert(&#39;x&#39;)" in html and "redirect not allowed" in html
    assert 'data-testid="register-retry"' not in html  # a 400 will not go away by itself
    nothing_stored(app)


def test_registration_token_expired(
    app: Flask, client: FlaskClient, lms_server: RegistrationServer
) -> None:
    lms = lms_server.moodle(unique("expired"))
    page = open_register(client, lms)
    lms.expired_token = True  # the admin waited too long before pressing Register
    handle = handle_of(page)
    assert_problem(
        press_register(client, handle, "Too late"),
        "registration_token_expired",
        "HTTP 401",
        "expired",
        "Start the registration again from the LMS",
        status=400,
    )
    nothing_stored(app)
    # The page cannot be pressed again: the token is spent.
    assert_problem(press_register(client, handle, "Again"), "registration_page_expired")
    assert len(lms.registrations()) == 1


@pytest.mark.parametrize(
    ("answer", "code", "phrase"),
    [
        (
            json.dumps({TOOL_CONFIGURATION: {"deployment_id": "1"}}).encode(),
            "registration_without_client_id",
            "no usable client_id",
        ),
        (
            json.dumps({"client_id": ""}).encode(),
            "registration_without_client_id",
            "no usable client_id",
        ),
        (
            json.dumps({"client_id": "x" * 300}).encode(),
            "registration_without_client_id",
            "no usable client_id",
        ),
        (b"<html>OK</html>", "registration_not_json", "not with JSON"),
        (b"[]", "registration_not_object", "not with a JSON object"),
    ],
)
def test_registration_answer_unusable(
    app: Flask,
    client: FlaskClient,
    lms_server: RegistrationServer,
    answer: bytes,
    code: str,
    phrase: str,
) -> None:
    lms = lms_server.moodle(unique("answer"), register_body=answer)
    assert_problem(register(client, lms), code, phrase)
    nothing_stored(app)


def test_a_passing_failure_can_be_retried_with_the_same_page(
    app: Flask, client: FlaskClient, lms_server: RegistrationServer
) -> None:
    lms = lms_server.moodle(unique("flaky"), register_status=503, register_body=b"busy")
    page = open_register(client, lms)
    handle = handle_of(page)
    html = assert_problem(press_register(client, handle, "Flaky"), "registration_refused", "503")
    assert 'data-testid="register-retry"' in html
    nothing_stored(app)
    lms.register_status, lms.register_body = 200, None  # the LMS is back
    again = press_register(client, handle, "Flaky")
    assert again.status_code == 200, again.get_data(as_text=True)[:800]
    assert [p["name"] for p in platforms(app)] == ["Flaky"]


def test_registration_timeout_says_so_and_stores_nothing(
    app: Flask, client: FlaskClient, lms_server: RegistrationServer
) -> None:
    lms = lms_server.moodle(unique("slowreg"), register_delay=TIMEOUT * 3)
    assert_problem(register(client, lms), "registration_timeout", "did not answer within")
    nothing_stored(app)


def test_forged_or_reused_pages_register_nothing(
    app: Flask, client: FlaskClient, lms_server: RegistrationServer
) -> None:
    for handle in ("", "x" * 43, "not-a-handle", "a\x00b"):
        assert_problem(press_register(client, handle, "Forged"), "registration_page_expired")
    lms = lms_server.moodle(unique("twice"))
    page = open_register(client, lms)
    handle = handle_of(page)
    assert press_register(client, handle, "Once").status_code == 200
    assert_problem(press_register(client, handle, "Twice"), "registration_page_expired")
    assert len(lms.registrations()) == 1 and len(platforms(app)) == 1


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("   ", "Give the platform a name"),
        ("x" * 201, "longer than 200"),
        ("a\x00b", "control characters"),
    ],
)
def test_a_bad_name_keeps_the_page_usable(
    app: Flask, client: FlaskClient, lms_server: RegistrationServer, name: str, phrase: str
) -> None:
    lms = lms_server.moodle(unique("name"))
    handle = handle_of(open_register(client, lms))
    response = press_register(client, handle, name)
    assert response.status_code == 400 and phrase in response.get_data(as_text=True)
    assert lms.registrations() == []  # the LMS was not asked
    nothing_stored(app)
    assert press_register(client, handle, "Fixed name").status_code == 200
    assert [p["name"] for p in platforms(app)] == ["Fixed name"]


def test_the_registration_token_is_never_logged(
    app: Flask,
    client: FlaskClient,
    lms_server: RegistrationServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)  # (urllib3 logs whole URLs at DEBUG, which is opt-in)
    caplog.set_level(logging.DEBUG, logger="lti_tool")
    refused = lms_server.moodle(unique("log"), register_status=400, register_body=b"no")
    assert register(client, refused).status_code == 400
    fine = lms_server.moodle(unique("log"))
    assert register(client, fine).status_code == 200
    # Blackboard puts its token in the registration endpoint's query.
    in_query = lms_server.blackboard(unique("log"), register_status=400, register_body=b"no")
    in_query.config_overrides = {"registration_endpoint": in_query.base + "/register?t=bb-secret"}
    page = register(client, in_query)
    assert page.status_code == 400 and "bb-secret" not in page.get_data(as_text=True)
    assert in_query.registrations()  # the endpoint was called, query and all
    assert "dynamic registration" in caplog.text  # it did log, just not the secrets
    for secret in (refused.token, fine.token, in_query.token, "bb-secret"):
        assert secret and secret not in caplog.text


# -- pure checks -------------------------------------------------------------------------------


def test_blackboards_configuration_host_is_a_subdomain_of_its_issuer() -> None:
    """Blackboard's portal serves the configuration of issuer https://blackboard.com from
    developer.blackboard.com; a look-alike domain is still refused."""
    document = {
        "issuer": "https://blackboard.com",
        "authorization_endpoint": "https://developer.blackboard.com/api/v1/gateway/oidcauth",
        "token_endpoint": "https://developer.blackboard.com/api/v1/gateway/oauth2/jwttoken",
        "jwks_uri": "https://developer.blackboard.com/.well-known/jwks.json",
        "registration_endpoint": "https://developer.blackboard.com/api/v1/gateway/registerLti",
        dynreg.PLATFORM_CONFIGURATION: {
            "product_family_code": "BlackboardLearn",
            "messages_supported": [{"type": RESOURCE}, {"type": DEEP}],
        },
    }
    config = dynreg.parse_configuration(
        document, "https://developer.blackboard.com/api/v1/gateway/openid-configuration"
    )
    assert config.is_blackboard and config.version == "" and config.product == "Blackboard Learn"
    with pytest.raises(dynreg.RegistrationProblem) as refused:
        dynreg.parse_configuration(document, "https://evilblackboard.com/openid-configuration")
    assert refused.value.code == "issuer_mismatch"


def test_error_excerpt_is_short_single_line_text() -> None:
    long_html = b"<html><body><h1>Error</h1>\n\n" + b"detail " * 200 + b"</body></html>"
    excerpt = dynreg.error_excerpt(long_html)
    assert excerpt.startswith("Error detail") and "<" not in excerpt and "\n" not in excerpt
    assert len(excerpt) <= dynreg.ERROR_EXCERPT + 1
    assert dynreg.error_excerpt(b'{"errors": ["redirect_uris is invalid"]}') == (
        "redirect_uris is invalid"
    )
    canvas = b'{"errors": {"redirect_uris": [{"attribute": "x", "message": "is invalid"}]}}'
    assert dynreg.error_excerpt(canvas) == "redirect_uris: is invalid"


# -- in the LMS's iframe -------------------------------------------------------------------------


def test_registration_needs_no_cookie(app: Flask, lms_server: RegistrationServer) -> None:
    """Browsers that block third-party cookies drop Lifeline's cookies in the LMS's iframe;
    the registration must not depend on them."""
    cookieless = app.test_client(use_cookies=False)
    lms = lms_server.moodle(unique("nocookie"))
    page = open_register(cookieless, lms)
    assert page.status_code == 200
    done = press_register(cookieless, handle_of(page), "No cookies")
    assert done.status_code == 200, done.get_data(as_text=True)[:800]
    assert [p["name"] for p in platforms(app)] == ["No cookies"]


@pytest.mark.browser
def test_in_a_real_browser_the_lms_dialog_closes_on_the_close_message(
    app: Flask, lms_server: RegistrationServer
) -> None:
    """Chromium: the LMS page (127.0.0.1) frames Lifeline (localhost, another site), the
    admin presses Register and then Return, and the LMS receives org.imsglobal.lti.close."""
    from playwright.sync_api import expect, sync_playwright
    from werkzeug.serving import make_server

    from tests.browser import launch_chromium

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    lms = lms_server.canvas(unique("chromium"))
    lms.tool_base = f"http://localhost:{server.server_port}"
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            try:
                page = browser.new_page()
                page.goto(lms.base + "/lms")
                tool = page.frame_locator("#tool")
                expect(tool.get_by_test_id("register-confirm")).to_be_visible()
                tool.get_by_test_id("register-name").fill("Canvas via Chromium")
                tool.get_by_test_id("register-submit").click()
                expect(tool.get_by_test_id("register-done")).to_be_visible()
                expect(tool.get_by_test_id("done-client-id")).to_have_text(f"{lms.name}-client-1")
                tool.get_by_test_id("register-close").click()
                expect(page.locator("#closed")).to_be_visible()
                messages = page.evaluate("window.lmsMessages")
                assert messages == [{"origin": lms.tool_base, "data": {"subject": CLOSE}}]
            finally:
                browser.close()
    finally:
        server.shutdown()
    assert [p["name"] for p in platforms(app)] == ["Canvas via Chromium"]


def test_one_address_cannot_make_lifeline_fetch_urls_in_bulk(
    client: FlaskClient, lms_server: RegistrationServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lti_tool.web import registration as registration_views

    monkeypatch.setattr(registration_views, "START_LIMIT", 2)
    lms = lms_server.moodle(unique("bulk"))
    assert open_register(client, lms).status_code == 200
    assert open_register(client, lms).status_code == 200
    throttled = open_register(client, lms)
    assert_problem(throttled, "too_many_registrations", "too often", status=429)
    assert len(lms.seen) == 2  # the third was not fetched
