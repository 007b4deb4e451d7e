"""Deep linking: an instructor places "Lifeline help" and the LMS gets a signed response."""

from __future__ import annotations

import html
import re
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.platform import (
    CLAIM,
    DL_CLAIM,
    ROLE_INSTRUCTOR,
    ROLE_LEARNER,
    ROLE_TA,
    TestPlatform,
    drop,
)

RETURN_URL = "https://lms.example.edu/deep_links?course=1&tool=lifeline"


def dl_settings(**changes: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "deep_link_return_url": RETURN_URL,
        "accept_types": ["ltiResourceLink"],
        "accept_presentation_document_targets": ["iframe"],
        "data": "opaque-123",
    }
    settings.update(changes)
    return {k: v for k, v in settings.items() if v is not None}


def deep_link_launch(
    platform: TestPlatform,
    client: FlaskClient,
    roles: list[str] | None = None,
    settings: dict[str, Any] | None = None,
) -> TestResponse:
    return platform.launch(
        client,
        **{
            "sub": "instructor-7",
            "name": "Ines Instructor",
            CLAIM + "message_type": "LtiDeepLinkingRequest",
            CLAIM + "resource_link": drop(),
            CLAIM + "roles": [ROLE_INSTRUCTOR] if roles is None else roles,
            DL_CLAIM + "deep_linking_settings": dl_settings() if settings is None else settings,
        },
    )


def placement_form(page: str) -> tuple[str, str]:
    """The confirm URL and the CSRF token of the placement page."""
    action = re.search(r'<form method="post" action="([^"]+)"', page)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert action and token, page
    return html.unescape(action.group(1)), html.unescape(token.group(1))


def autopost(page: str) -> tuple[str, str]:
    """The action and JWT of the auto-post form that returns to the LMS."""
    action = re.search(r'<form id="autopost" action="([^"]+)" method="post">', page)
    token = re.search(r'<input type="hidden" name="JWT" value="([^"]+)">', page)
    assert action and token, page
    return html.unescape(action.group(1)), html.unescape(token.group(1))


def verify_with_tool_jwks(
    client: FlaskClient, token: str, platform: TestPlatform
) -> dict[str, Any]:
    """Verify as the LMS does: by the kid in the header, against the tool's published JWKS."""
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
    published = client.get("/lti/jwks").get_json()["keys"]
    jwk = next(k for k in published if k["kid"] == header["kid"])
    claims: dict[str, Any] = jwt.decode(
        token,
        jwt.PyJWK(jwk).key,
        algorithms=["RS256"],
        audience=platform.issuer,
        issuer=platform.client_id,
    )
    return claims


def confirm(client: FlaskClient, url: str, **form: str) -> TestResponse:
    return client.post(url, data=form)


@pytest.fixture
def placement(client: FlaskClient, platform: TestPlatform) -> tuple[str, str]:
    response = deep_link_launch(platform, client)
    assert response.status_code == 200, response.get_data(as_text=True)
    return placement_form(response.get_data(as_text=True))


def test_instructor_lands_on_the_placement_page(
    client: FlaskClient, platform: TestPlatform
) -> None:
    response = deep_link_launch(platform, client)
    assert response.status_code == 200, response.get_data(as_text=True)
    page = response.get_data(as_text=True)
    assert 'data-testid="deep-link-submit"' in page
    assert 'data-testid="deep-link-cancel"' in page
    assert "Intro to Programming" in page
    assert 'value="Lifeline help"' in page
    url, csrf = placement_form(page)
    assert re.fullmatch(r"/lti/deep-link/[A-Za-z0-9_-]{20,64}", url)
    assert len(csrf) >= 32
    # The page can be reloaded in the same browser.
    launch_id = url.rsplit("/", 1)[1]
    again = client.get(f"/app/{launch_id}")
    assert again.status_code == 200
    assert placement_form(again.get_data(as_text=True))[0] == url


def test_confirm_returns_a_signed_response_to_the_lms(
    client: FlaskClient, platform: TestPlatform, placement: tuple[str, str]
) -> None:
    url, csrf = placement
    response = confirm(
        client,
        url,
        csrf_token=csrf,
        action="place",
        title="  Lab 3 help  ",
        text="Ask a tutor when recursion bites.",
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    action, token = autopost(response.get_data(as_text=True))
    assert action == RETURN_URL

    claims = verify_with_tool_jwks(client, token, platform)
    assert claims["iss"] == platform.client_id
    assert claims["aud"] == [platform.issuer]
    assert claims[CLAIM + "message_type"] == "LtiDeepLinkingResponse"
    assert claims[CLAIM + "version"] == "1.3.0"
    assert claims[CLAIM + "deployment_id"] == platform.deployment_id
    assert claims[DL_CLAIM + "data"] == "opaque-123"
    assert claims["nonce"]
    assert claims["iat"] < claims["exp"] <= claims["iat"] + 3600
    assert claims[DL_CLAIM + "content_items"] == [
        {
            "type": "ltiResourceLink",
            "title": "Lab 3 help",
            "url": "https://lifeline.test/lti/launch",
            "text": "Ask a tutor when recursion bites.",
            "custom": {"lifeline_description": "Ask a tutor when recursion bites."},
        }
    ]


def test_data_is_echoed_exactly_and_left_out_when_not_sent(
    client: FlaskClient, platform: TestPlatform
) -> None:
    tricky = 'ctx=42&sig="a<b>"; ünïcode'
    for data, expected in ((tricky, tricky), (None, None)):
        page = deep_link_launch(platform, client, settings=dl_settings(data=data))
        url, csrf = placement_form(page.get_data(as_text=True))
        response = confirm(client, url, csrf_token=csrf, title="Lifeline help")
        claims = verify_with_tool_jwks(
            client, autopost(response.get_data(as_text=True))[1], platform
        )
        if expected is None:
            assert DL_CLAIM + "data" not in claims
        else:
            assert claims[DL_CLAIM + "data"] == expected
        items = claims[DL_CLAIM + "content_items"]
        assert [(i["title"], "text" in i, "custom" in i) for i in items] == [
            ("Lifeline help", False, False)
        ]


def test_cancel_returns_no_content_items(
    client: FlaskClient, platform: TestPlatform, placement: tuple[str, str]
) -> None:
    url, csrf = placement
    response = confirm(client, url, csrf_token=csrf, action="cancel", title="")
    assert response.status_code == 200, response.get_data(as_text=True)
    action, token = autopost(response.get_data(as_text=True))
    assert action == RETURN_URL
    claims = verify_with_tool_jwks(client, token, platform)
    assert claims[DL_CLAIM + "content_items"] == []
    assert claims[DL_CLAIM + "data"] == "opaque-123"
    assert claims[CLAIM + "message_type"] == "LtiDeepLinkingResponse"


@pytest.mark.parametrize(
    ("title", "text", "message"),
    [
        ("", "", "Give the link a title"),
        ("   ", "", "Give the link a title"),
        ("x" * 201, "", "The title is longer than 200 characters."),
        ("Lifeline help", "y" * 1001, "The description is longer than 1000 characters."),
    ],
    ids=["empty-title", "blank-title", "long-title", "long-text"],
)
def test_invalid_placement_is_a_400_with_the_message_and_no_jwt(
    client: FlaskClient,
    platform: TestPlatform,
    placement: tuple[str, str],
    title: str,
    text: str,
    message: str,
) -> None:
    url, csrf = placement
    response = confirm(client, url, csrf_token=csrf, action="place", title=title, text=text)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert 'data-testid="deep-link-error"' in page
    assert message in page
    assert "JWT" not in page
    assert 'id="autopost"' not in page
    # The form is shown again, and the launch can still be confirmed.
    assert placement_form(page)[0] == url
    ok = confirm(client, url, csrf_token=csrf, title="Lifeline help")
    assert ok.status_code == 200
    assert autopost(ok.get_data(as_text=True))[0] == RETURN_URL


@pytest.mark.parametrize("csrf", [None, "", "forged-token"])
def test_confirm_without_the_csrf_token_is_refused(
    client: FlaskClient, placement: tuple[str, str], csrf: str | None
) -> None:
    url, _ = placement
    form = {"title": "Lifeline help", "action": "place"}
    if csrf is not None:
        form["csrf_token"] = csrf
    response = confirm(client, url, **form)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "CSRF check failed" in page
    assert "JWT" not in page


@pytest.mark.parametrize(
    "roles", [[ROLE_LEARNER], [ROLE_INSTRUCTOR, ROLE_TA]], ids=["learner", "ta"]
)
def test_only_instructors_may_deep_link(
    client: FlaskClient, platform: TestPlatform, roles: list[str]
) -> None:
    response = deep_link_launch(platform, client, roles=roles)
    assert response.status_code == 403
    page = response.get_data(as_text=True)
    assert "Only instructors can place Lifeline in a course." in page
    assert 'data-testid="deep-link-submit"' not in page

    # Posting to the confirm URL directly (with a valid CSRF token) is refused as well.
    with client.session_transaction() as session:
        launch_id = session["launches"][-1]
        session["csrf_token"] = "learner-csrf-token-" + "x" * 20
    direct = confirm(
        client,
        f"/lti/deep-link/{launch_id}",
        csrf_token="learner-csrf-token-" + "x" * 20,
        title="Lifeline help",
    )
    assert direct.status_code == 403
    assert "JWT" not in direct.get_data(as_text=True)


def test_resource_link_launch_cannot_be_confirmed(
    client: FlaskClient, platform: TestPlatform
) -> None:
    response = platform.launch(client, **{CLAIM + "roles": [ROLE_INSTRUCTOR]})
    assert response.status_code == 200
    with client.session_transaction() as session:
        launch_id = session["launches"][-1]
        session["csrf_token"] = "csrf-" + "y" * 40
    direct = confirm(
        client, f"/lti/deep-link/{launch_id}", csrf_token="csrf-" + "y" * 40, title="Help"
    )
    assert direct.status_code == 403
    assert "cannot place content" in direct.get_data(as_text=True)


def test_another_browser_cannot_confirm(
    app: Flask, client: FlaskClient, platform: TestPlatform, placement: tuple[str, str]
) -> None:
    url, csrf = placement
    stranger = app.test_client()
    # Without a session of its own the CSRF check stops it.
    assert confirm(stranger, url, csrf_token=csrf, title="Lifeline help").status_code == 400
    # With its own (valid) launch and CSRF token, the first browser's launch is still not its own.
    own_url, own_csrf = placement_form(deep_link_launch(platform, stranger).get_data(as_text=True))
    assert own_url != url
    refused = confirm(stranger, url, csrf_token=own_csrf, title="Lifeline help")
    assert refused.status_code == 403
    assert "another browser" in refused.get_data(as_text=True)
    assert "JWT" not in refused.get_data(as_text=True)
    # The owner still can.
    assert confirm(client, url, csrf_token=csrf, title="Lifeline help").status_code == 200


@pytest.mark.parametrize(
    "dl",
    [
        dl_settings(deep_link_return_url=None),
        dl_settings(deep_link_return_url="javascript:alert(1)"),
        {},
    ],
    ids=["no-return-url", "not-http-return-url", "no-settings"],
)
def test_deep_linking_request_without_return_url_is_a_400(
    client: FlaskClient, platform: TestPlatform, dl: dict[str, Any]
) -> None:
    response = deep_link_launch(platform, client, settings=dl)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "deep_link_return_url" in page
    assert 'data-testid="deep-link-submit"' not in page
