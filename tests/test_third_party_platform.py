"""Launches driven by an LTI 1.3 platform we did not write: ``lti1p3platform`` from PyPI.

The package is an abstract platform: the LMS subclasses its platform config
(``LTI1P3PlatformConfAbstract``), OIDC login (``OIDCLoginAbstract``) and message launch
(``LTIAdvantageMessageLaunchAbstract``) and plugs in its own web framework. Here that "web
framework" is the Flask test client standing in for the user's browser:

1. ``OIDCLogin.initiate_login`` builds the third-party login initiation URL; the browser GETs
   it on Lifeline's ``/lti/login``.
2. Lifeline redirects to the platform's auth URL with state, nonce and redirect_uri; that
   redirect becomes the ``Request`` handed to ``MessageLaunch.lti_launch``, which validates the
   preflight response, builds and signs the id_token, and renders the package's own
   auto-submitting launch form (``lti1p3platform/framework/templates/launch.html``).
3. The browser posts that form to the ``redirect_uri`` Lifeline gave.

For deep linking, the platform's own ``validate_deeplinking_resp`` checks Lifeline's
LtiDeepLinkingResponse, fetching Lifeline's keyset over real HTTP from ``/lti/jwks`` (the app
is served on 127.0.0.1 for that), and the placed link is then launched like any other.

Where lti1p3platform 0.1.8 falls short, and what these tests do about it:

* ``validate_deeplinking_resp`` decodes with ``verify_aud=False`` and checks neither ``iss``,
  ``aud``, ``deployment_id`` nor the echoed ``data``; the test checks those itself
  (``check_response_claims``), on the claims the package has already signature-checked.
* Its deep linking ``data`` is a JSON object, not the string the spec asks for; we send what it
  sends, and check that Lifeline echoes it back unchanged.
* ``lti1p3platform.framework.templates`` imports ``pkg_resources`` (unused there): deprecated,
  warning-raising in newer setuptools and absent where setuptools is not installed (Python
  3.12+ venvs, setuptools >= 81). Its ``launch.html`` is loaded with a Jinja loader of our own,
  from the same file.
* The preflight check (``validate_preflight_response``) does not look at ``login_hint`` or
  ``lti_message_hint`` (the README leaves that to ``prepare_launch``), nor does it check
  ``redirect_uri`` against the tool's registered launch URL: it would post the signed id_token
  wherever the auth request says. Our ``prepare_launch`` checks all three, as an LMS must.
* The README's registration example never calls ``set_iss``; without it
  ``prepare_preflight_url`` fails, so ``LmsPlatformConf`` sets it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import jinja2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from flask import Flask
from flask.testing import FlaskClient
from lti1p3platform.ltiplatform import LTI1P3PlatformConfAbstract
from lti1p3platform.message_launch import LTIAdvantageMessageLaunchAbstract
from lti1p3platform.oidc_login import OIDCLoginAbstract
from lti1p3platform.registration import Registration
from lti1p3platform.request import Request, TRequest
from sqlalchemy import select
from werkzeug.serving import BaseWSGIServer, make_server

from lti_tool.courses import Exercise, Person
from lti_tool.lti.registry import add_platform
from tests.conftest import BASE_URL
from tests.platform import CLAIM, DL_CLAIM, LIS, JwksServer, new_key

ISSUER = "https://lms.lti1p3platform.test"
CLIENT_ID = "lti1p3platform-client"
DEPLOYMENT_ID = "lti1p3platform-deployment"
AUTH_URL = ISSUER + "/oidc/auth"
RETURN_URL = ISSUER + "/deep-link/return"
COURSE = {"id": "course-bio-200", "title": "Cell Biology", "label": "BIO200"}

_PLATFORM_KEY = new_key()
_TEMPLATES = jinja2.Environment(  # the package's launch form, without its pkg_resources import
    loader=jinja2.PackageLoader("lti1p3platform.framework", "templates")
)


@dataclass(frozen=True)
class LmsUser:
    user_id: str
    name: str
    email: str
    roles: list[str]


LEARNER = LmsUser("bio-learner-7", "Rosalind Franklin", "rf@bio.test", [LIS + "membership#Learner"])
INSTRUCTOR = LmsUser(
    "bio-teacher-1", "Barbara McClintock", "bm@bio.test", [LIS + "membership#Instructor"]
)


# -- the LMS, built on lti1p3platform ------------------------------------------------------


class LmsPlatformConf(LTI1P3PlatformConfAbstract):
    """The platform's registration of Lifeline, as the package's README sets it up."""

    def init_platform_config(self, **kwargs: Any) -> None:
        pem = _PLATFORM_KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        public_pem = (
            _PLATFORM_KEY.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        self._registration = (
            Registration()
            .set_iss(ISSUER)
            .set_client_id(CLIENT_ID)
            .set_deployment_id(DEPLOYMENT_ID)
            .set_launch_url(BASE_URL + "/lti/launch")
            .set_deeplink_launch_url(BASE_URL + "/lti/launch")
            .set_oidc_login_url(BASE_URL + "/lti/login")
            .set_tool_key_set_url(kwargs["tool_keyset_url"])
            .set_platform_public_key(public_pem)
            .set_platform_private_key(pem)
        )

    def get_registration_by_params(self, **kwargs: Any) -> Registration:
        assert self._registration is not None
        return self._registration


class BrowserRequest(Request):
    """What the LMS's web framework sees: here, the URL the browser was redirected to."""

    def build_metadata(self, request: Any) -> TRequest:
        url = str(request)
        parts = urlsplit(url)
        return {
            "method": "GET",
            "form_data": {},
            "get_data": dict(parse_qsl(parts.query)),
            "headers": {},
            "content_type": None,
            "path": parts.path,
            "json": None,
        }


class OIDCLogin(OIDCLoginAbstract):
    """Starts a launch; the message hint names what the LMS will launch, kept server-side."""

    def __init__(self, request: Any, platform_config: LmsPlatformConf, lms: Lms) -> None:
        super().__init__(request, platform_config)
        self._lms = lms

    def set_lti_message_hint(self, **kwargs: Any) -> None:
        hint = uuid.uuid4().hex
        self._lms.hints[hint] = kwargs
        self._lti_message_hint = hint

    def get_redirect(self, url: str) -> str:
        return url  # the 302 the LMS would send; the test's "browser" follows it


class MessageLaunch(LTIAdvantageMessageLaunchAbstract):
    def __init__(self, request: Request, platform_config: LmsPlatformConf, lms: Lms) -> None:
        super().__init__(request, platform_config)
        self._lms = lms

    def prepare_launch(self, preflight_response: dict[str, Any]) -> None:
        hint = self._lms.hints.pop(preflight_response.get("lti_message_hint", ""))
        user: LmsUser = hint["user"]
        assert preflight_response["login_hint"] == user.user_id, "login_hint is not the user"
        assert self._registration is not None
        registered = {
            self._registration.get_launch_url(),
            self._registration.get_deeplink_launch_url(),
        }
        assert preflight_response["redirect_uri"] in registered, "unregistered redirect_uri"
        self.set_user_data(user.user_id, user.roles, full_name=user.name, email_address=user.email)
        self.set_launch_context_claim(
            COURSE["id"],
            context_types=[LIS + "course#CourseOffering"],
            context_title=COURSE["title"],
            context_label=COURSE["label"],
        )
        self.set_launch_presentation_claim("iframe", ISSUER + "/course")
        if hint.get("deep_link"):
            self.set_dl(
                RETURN_URL,
                title="Add a tool",
                accept_types={"ltiResourceLink"},
                extra_data=hint["data"],
            )
        else:
            self.set_resource_link_claim(hint["link_id"], title=hint["title"])
            if hint.get("custom"):
                self.set_custom_parameters_claim(hint["custom"])

    def render_launch_form(self, launch_data: dict[str, Any], **kwargs: Any) -> str:
        return _TEMPLATES.get_template("launch.html").render(launch_data)


@dataclass
class Lms:
    conf: LmsPlatformConf
    hints: dict[str, dict[str, Any]] = field(default_factory=dict)

    def initiate_login(self, user: LmsUser, deep_link: bool = False, **hint: Any) -> str:
        login = OIDCLogin("https://lms.lti1p3platform.test/course", self.conf, self)
        if deep_link:
            login.set_deeplinking_launch_url()
        login.set_lti_message_hint(user=user, deep_link=deep_link, **hint)
        url: str = login.initiate_login(user.user_id)
        return url

    def auth_response(self, auth_redirect: str) -> str:
        """The platform's OIDC auth endpoint: the launch form the browser auto-submits."""
        launch = MessageLaunch(BrowserRequest(auth_redirect), self.conf, self)
        html: str = launch.lti_launch()
        return html


# -- a browser, for the test client --------------------------------------------------------


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((values.get("action", ""), {}))
        elif tag in {"input", "textarea"} and self.forms and "name" in values:
            self.forms[-1][1][values["name"]] = values.get("value", "")


def parse_form(html: str) -> tuple[str, dict[str, str]]:
    parser = _FormParser()
    parser.feed(html)
    assert len(parser.forms) == 1, html
    return parser.forms[0]


def resolve(page_url: str, action: str) -> str:
    """A form's action as the browser resolves it against the page's URL."""
    url = urljoin(page_url, action)
    assert url.startswith(BASE_URL + "/"), url
    return url


@dataclass
class Launched:
    html: str
    status: int
    auth_query: dict[str, str]
    launch_form: tuple[str, dict[str, str]]


def run_launch(client: FlaskClient, lms: Lms, user: LmsUser, **hint: Any) -> Launched:
    """login initiation -> Lifeline /lti/login -> platform auth -> POST to /lti/launch."""
    login_url = lms.initiate_login(user, **hint)
    assert login_url.startswith(BASE_URL + "/lti/login?")
    response = client.get(login_url)  # a full https URL: the cookies are Secure ones
    assert response.status_code == 302, response.get_data(as_text=True)
    location = response.headers["Location"]
    assert location.startswith(AUTH_URL + "?")
    auth_query = dict(parse_qsl(urlsplit(location).query))
    assert auth_query["redirect_uri"] == BASE_URL + "/lti/launch"
    assert auth_query["login_hint"] == user.user_id
    assert auth_query["client_id"] == CLIENT_ID

    action, fields = parse_form(lms.auth_response(location))
    assert action == auth_query["redirect_uri"]
    assert set(fields) == {"id_token", "state"}
    launch = client.post(action, data=fields)
    return Launched(launch.get_data(as_text=True), launch.status_code, auth_query, (action, fields))


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def live_tool(app: Flask) -> Iterator[str]:
    """The same app, also served over real HTTP on 127.0.0.1 (the platform fetches our JWKS)."""
    server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def lms(app: Flask, jwks_server: JwksServer, live_tool: str) -> Lms:
    conf = LmsPlatformConf(tool_keyset_url=live_tool + "/lti/jwks")
    # The platform publishes its keys with the package's own get_jwks(), over real HTTP.
    keyset_url, _ = jwks_server.add(conf.get_jwks())  # type: ignore[arg-type]
    services = app.extensions["lifeline"]
    with services.db.transaction() as session:
        add_platform(
            session,
            name="lti1p3platform LMS",
            issuer=ISSUER,
            client_id=CLIENT_ID,
            auth_login_url=AUTH_URL,
            auth_token_url=ISSUER + "/oauth2/token",
            keyset_url=keyset_url,
            deployment_ids=[DEPLOYMENT_ID],
        )
    services.registrations.clear()
    return Lms(conf)


# -- tests ---------------------------------------------------------------------------------


def test_learner_launch_signed_by_lti1p3platform(client: FlaskClient, lms: Lms, app: Flask) -> None:
    result = run_launch(client, lms, LEARNER, link_id="bio-lab-2", title="Lab 2: Mitosis")
    assert result.status == 200, result.html
    assert 'data-testid="learner-home"' in result.html
    assert "Cell Biology" in result.html
    assert "Lab 2: Mitosis" in result.html
    assert "Rosalind Franklin" in result.html

    # The id_token really came from the package: its kid is the package's JWK thumbprint.
    token = result.launch_form[1]["id_token"]
    assert jwt.get_unverified_header(token)["kid"] == lms.conf.get_jwks()["keys"][0]["kid"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["nonce"] == result.auth_query["nonce"]

    with app.extensions["lifeline"].db.transaction() as session:
        person = session.scalars(select(Person)).one()
        assert (person.sub, person.name) == ("bio-learner-7", "Rosalind Franklin")
        exercise = session.scalars(select(Exercise)).one()
        assert exercise.resource_link_id == "bio-lab-2"


def test_replaying_the_lti1p3platform_launch_form_is_refused(client: FlaskClient, lms: Lms) -> None:
    result = run_launch(client, lms, LEARNER, link_id="bio-lab-2", title="Lab 2: Mitosis")
    assert result.status == 200, result.html
    action, fields = result.launch_form
    replay = client.post(action, data=fields)
    assert replay.status_code == 401
    assert 'data-testid="learner-home"' not in replay.get_data(as_text=True)


def test_instructor_launch_signed_by_lti1p3platform(client: FlaskClient, lms: Lms) -> None:
    result = run_launch(client, lms, INSTRUCTOR, link_id="bio-lab-3", title="Lab 3: Meiosis")
    assert result.status == 200, result.html
    assert 'data-testid="instructor-home"' in result.html
    assert 'data-testid="learner-home"' not in result.html
    assert "Cell Biology" in result.html
    assert "Lab 3: Meiosis" in result.html


def check_response_claims(claims: dict[str, Any], data: dict[str, Any]) -> None:
    """What lti1p3platform's validate_deeplinking_resp leaves unchecked (verify_aud=False)."""
    assert claims[CLAIM + "message_type"] == "LtiDeepLinkingResponse"
    assert claims["iss"] == CLIENT_ID
    assert claims["aud"] in (ISSUER, [ISSUER])
    assert claims[CLAIM + "deployment_id"] == DEPLOYMENT_ID
    assert claims[CLAIM + "version"] == "1.3.0"
    assert claims[DL_CLAIM + "data"] == data
    assert claims["nonce"]


def test_deep_linking_response_is_validated_by_lti1p3platform(
    client: FlaskClient, lms: Lms
) -> None:
    data = {"placement": "week-3", "nonce": uuid.uuid4().hex}
    result = run_launch(client, lms, INSTRUCTOR, deep_link=True, data=data)
    assert result.status == 200, result.html
    assert "Place Lifeline help" in result.html
    sent = jwt.decode(result.launch_form[1]["id_token"], options={"verify_signature": False})
    assert sent[CLAIM + "message_type"] == "LtiDeepLinkingRequest"

    # The instructor names the link and submits Lifeline's own form.
    action, fields = parse_form(result.html)
    fields.update(title="Tutor help: Mitosis lab", text="Ask a tutor when stuck.", action="place")
    confirm = client.post(resolve(result.launch_form[0], action), data=fields)
    assert confirm.status_code == 200, confirm.get_data(as_text=True)

    # Lifeline auto-posts the signed response to the platform's deep_link_return_url.
    return_url, returned = parse_form(confirm.get_data(as_text=True))
    assert return_url == RETURN_URL
    token = returned["JWT"]

    # The platform validates it with its own code (signature against /lti/jwks over HTTP).
    items = lms.conf.validate_deeplinking_resp({"JWT": token})
    assert items == [
        {
            "type": "ltiResourceLink",
            "title": "Tutor help: Mitosis lab",
            "url": BASE_URL + "/lti/launch",
            "text": "Ask a tutor when stuck.",
            "custom": {"lifeline_description": "Ask a tutor when stuck."},
        }
    ]
    # ... and, the signature now being checked, what the package leaves unchecked.
    check_response_claims(jwt.decode(token, options={"verify_signature": False}), data)

    # The platform places the link; a learner launching it lands on that exercise.
    item = items[0]
    launched = run_launch(
        client,
        lms,
        LEARNER,
        link_id="placed-" + uuid.uuid4().hex[:8],
        title=item["title"],
        custom=item.get("custom"),
    )
    assert launched.status == 200, launched.html
    assert 'data-testid="learner-home"' in launched.html
    assert "Tutor help: Mitosis lab" in launched.html
    assert "Cell Biology" in launched.html


def test_lti1p3platform_rejects_a_response_not_signed_by_lifeline(
    client: FlaskClient, lms: Lms
) -> None:
    """The platform's check is real: a response signed with another key under Lifeline's kid
    fails the package's signature check."""
    result = run_launch(client, lms, INSTRUCTOR, deep_link=True, data={"x": "1"})
    action, fields = parse_form(result.html)
    confirm = client.post(
        resolve(result.launch_form[0], action), data={**fields, "action": "place"}
    )
    _, returned = parse_form(confirm.get_data(as_text=True))
    genuine = returned["JWT"]
    forged = jwt.encode(
        jwt.decode(genuine, options={"verify_signature": False}),
        new_key(),
        algorithm="RS256",
        headers={"kid": jwt.get_unverified_header(genuine)["kid"]},
    )
    with pytest.raises(jwt.InvalidSignatureError):
        lms.conf.validate_deeplinking_resp({"JWT": forged})
    assert lms.conf.validate_deeplinking_resp({"JWT": genuine})[0]["type"] == "ltiResourceLink"
