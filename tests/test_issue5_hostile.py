"""Hostile and malformed input to the Real LMS integration (issue 5): dynamic registration,
the admin page, launches into registrations that accept new deployments, and the answers of a
platform's services (NRPS, AGS, its token endpoint). Each test pins a defect found in review:
a request that ended in a 500, a job that crashed instead of recording a clear error, or a
registration that could change an active platform's keys without an administrator."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from lti_tool import jobs, tasks
from lti_tool.admin.settings import set_registration_status
from lti_tool.config import Settings
from lti_tool.courses import Person
from lti_tool.db import Database
from lti_tool.lms.models import CourseMember, CourseServices
from lti_tool.lms.sync import RosterSyncFailed
from lti_tool.lti import ags, nrps
from lti_tool.lti.models import Deployment, Platform, PlatformStatus
from lti_tool.lti.platform_config import BaseUrlError, check_base_url
from lti_tool.lti.registry import RegistrationError, check_url, set_status
from lti_tool.lti.service_token import (
    AccessTokens,
    HttpPolicy,
    Reply,
    ServiceError,
    TokenEndpoint,
    TokenError,
)
from lti_tool.web import registration as registration_views
from tests.helpers import launch_as
from tests.lms_services import (
    LmsServices,
    register_platform,
    run_worker,
    service_claims,
)
from tests.platform import CLAIM, JwksServer, TestPlatform, drop
from tests.registration_platform import RegistrationPlatform, RegistrationServer

TIMEOUT = 1.0
CTX = "course-1"


@pytest.fixture(scope="module")
def lms_server() -> Iterator[RegistrationServer]:
    server = RegistrationServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Jobs go to Redis and a worker runs them (as in production); 2 roster members a page.
    return settings.with_overrides(http_timeout=TIMEOUT, jobs_inline=False, roster_page_size=2)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def not_500(response: TestResponse) -> str:
    body = response.get_data(as_text=True)
    assert response.status_code != 500, body[:800]
    return body


def problem_code(response: TestResponse) -> str:
    body = not_500(response)
    marker = 'data-code="'
    assert marker in body, body[:800]
    return body.split(marker, 1)[1].split('"', 1)[0]


def handle_of(response: TestResponse) -> str:
    body = response.get_data(as_text=True)
    assert response.status_code == 200, body[:800]
    return body.split('name="handle" value="', 1)[1].split('"', 1)[0]


def stored_platforms(app: Flask) -> list[dict[str, Any]]:
    with app.extensions["lifeline"].db.transaction() as session:
        return [
            {
                "client_id": p.client_id,
                "keys": p.keyset_url,
                "auth": p.auth_login_url,
                "token": p.auth_token_url,
                "issuer": p.issuer,
                "status": p.status,
            }
            for p in session.scalars(select(Platform).order_by(Platform.id))
        ]


# -- dynamic registration: URLs a parser cannot take apart ----------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://lms.example.edu:99999/.well-known/openid-configuration",  # port out of range
        "https://lms.example.edu:abc/.well-known/openid-configuration",  # port not a number
        "http://[::1/.well-known/openid-configuration",  # unclosed IPv6 literal
        "https://[not-an-address]/config",
    ],
)
def test_register_with_an_unparsable_configuration_url_is_a_400(
    client: FlaskClient, app: Flask, url: str
) -> None:
    response = client.get("/lti/register?" + urlencode({"openid_configuration": url}))
    assert problem_code(response) == "invalid_openid_configuration"
    assert response.status_code == 400
    assert stored_platforms(app) == []


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"issuer": "http://[::1"}, "configuration_invalid_issuer"),
        ({"jwks_uri": "https://[lms.example.edu/jwks"}, "configuration_invalid_jwks_uri"),
        ({"jwks_uri": "https://lms.example.edu:0x50/jwks"}, "configuration_invalid_jwks_uri"),
        (
            {"authorization_endpoint": "https://lms.example.edu:70000/auth"},
            "configuration_invalid_authorization_endpoint",
        ),
    ],
)
def test_a_configuration_with_unparsable_urls_is_a_400(
    client: FlaskClient,
    app: Flask,
    lms_server: RegistrationServer,
    overrides: dict[str, Any],
    code: str,
) -> None:
    lms = lms_server.moodle(unique("badurl"), config_overrides=overrides)
    assert problem_code(client.get(lms.start_url())) == code
    assert stored_platforms(app) == []


def test_a_registration_endpoint_with_a_bad_port_is_refused_before_anything_is_posted(
    client: FlaskClient, app: Flask, lms_server: RegistrationServer
) -> None:
    lms = lms_server.moodle(unique("badport"))
    lms.config_overrides = {"registration_endpoint": lms.base.rsplit(":", 1)[0] + ":99999/r"}
    response = client.get(lms.start_url())
    assert problem_code(response) == "configuration_invalid_registration_endpoint"
    assert lms.registrations() == [] and stored_platforms(app) == []


def test_check_url_refuses_what_it_cannot_parse() -> None:
    """The registry's URL check (admin, CLI, dynamic registration) says why, not ValueError."""
    for url in ("http://[::1", "https://lms.example.edu:99999/x", "https://lms.example.edu:x/"):
        with pytest.raises(RegistrationError):
            check_url("keyset URL", url)


# -- dynamic registration: JSON nested deeper than the parser goes --------------------------

DEEP = b"[" * 5000 + b"]" * 5000


def test_a_deeply_nested_configuration_is_not_json_not_a_500(
    client: FlaskClient, app: Flask, lms_server: RegistrationServer
) -> None:
    lms = lms_server.moodle(unique("deepcfg"), config_body=DEEP)
    assert problem_code(client.get(lms.start_url())) == "configuration_not_json"


@pytest.mark.parametrize(
    ("status", "code"), [(200, "registration_not_json"), (400, "registration_refused")]
)
def test_a_deeply_nested_registration_answer_is_not_a_500(
    client: FlaskClient, app: Flask, lms_server: RegistrationServer, status: int, code: str
) -> None:
    lms = lms_server.moodle(unique("deepreg"), register_status=status, register_body=DEEP)
    handle = handle_of(client.get(lms.start_url()))
    response = client.post("/lti/register/confirm", data={"handle": handle, "name": "Deep"})
    assert problem_code(response) == code
    assert stored_platforms(app) == []


# -- dynamic registration: the rate limit also covers pressing Register again ---------------


def test_pressing_register_again_and_again_is_rate_limited(
    client: FlaskClient, app: Flask, lms_server: RegistrationServer
) -> None:
    """A platform answering 503 leaves the page usable ("Register again"): without a limit
    on that button, one page made Lifeline POST to a host of the visitor's choosing without
    end, past the limit on opening registration pages."""
    lms = lms_server.moodle(unique("flood"), register_status=503, register_body=b"busy")
    handle = handle_of(client.get(lms.start_url()))
    statuses = [
        client.post("/lti/register/confirm", data={"handle": handle, "name": "Flood"}).status_code
        for _ in range(registration_views.START_LIMIT + 5)
    ]
    assert 429 in statuses and 500 not in statuses
    assert len(lms.registrations()) < registration_views.START_LIMIT
    # Once limited, the page says so (and nothing reaches the platform any more).
    posted = len(lms.registrations())
    limited = client.post("/lti/register/confirm", data={"handle": handle, "name": "Flood"})
    assert problem_code(limited) == "too_many_registrations" and limited.status_code == 429
    assert len(lms.registrations()) == posted


def test_the_rate_limit_window_always_expires(
    client: FlaskClient, redis_client: redis.Redis, lms_server: RegistrationServer
) -> None:
    """The counter and its expiry are set together: a counter left without a ttl (a worker
    killed between INCR and EXPIRE) would lock an address out for good."""
    key = "lifeline:dynamic-registration-starts:127.0.0.1"
    redis_client.set(key, 3)  # a counter that lost its expiry
    client.get("/lti/register")
    assert 0 < int(redis_client.ttl(key)) <= registration_views.START_WINDOW


# -- dynamic registration: re-registering an existing client id ----------------------------


def _register(client: FlaskClient, lms: RegistrationPlatform, name: str) -> TestResponse:
    handle = handle_of(client.get(lms.start_url()))
    return client.post("/lti/register/confirm", data={"handle": handle, "name": name})


def test_a_re_registration_that_moves_the_keys_of_an_active_platform_needs_approval(
    client: FlaskClient, app: Flask, lms_server: RegistrationServer, jwks_server: JwksServer
) -> None:
    """Whoever can serve a configuration from the issuer's host (or any subdomain of it) and
    answer a registration with an existing client id used to replace the keyset URL of an
    *active* platform, and could then sign launches as any of its users. A re-registration
    that changes where keys or logins come from now waits for an administrator again."""
    with app.extensions["lifeline"].db.transaction() as session:
        set_registration_status(session, "pending", by="test")
    lms = lms_server.moodle(unique("hijack"))
    lms.register_body = json.dumps({"client_id": "fixed-client"}).encode()
    assert _register(client, lms, "Real LMS").status_code == 200
    with app.extensions["lifeline"].db.transaction() as session:
        set_status(session, session.scalars(select(Platform)).one(), PlatformStatus.ACTIVE)
    app.extensions["lifeline"].registrations.clear()

    # The same configuration again (the LMS re-runs its registration): still active.
    assert _register(client, lms, "Real LMS").status_code == 200
    [same] = stored_platforms(app)
    assert same["status"] == "active" and same["keys"] == lms.base + "/jwks"

    # Keys elsewhere: stored, but the platform must be approved again before it launches.
    lms.config_overrides = {"jwks_uri": jwks_server.base + "/attacker-keys"}
    done = _register(client, lms, "Real LMS")
    body = not_500(done)
    assert done.status_code == 200 and 'data-testid="done-pending"' in body
    [moved] = stored_platforms(app)
    assert moved["keys"] == jwks_server.base + "/attacker-keys"
    assert moved["status"] == "pending"


def test_a_re_registration_never_re_enables_a_disabled_platform(
    client: FlaskClient, app: Flask, lms_server: RegistrationServer, jwks_server: JwksServer
) -> None:
    lms = lms_server.moodle(unique("disabled"))
    lms.register_body = json.dumps({"client_id": "fixed-client"}).encode()
    assert _register(client, lms, "LMS").status_code == 200
    with app.extensions["lifeline"].db.transaction() as session:
        set_status(session, session.scalars(select(Platform)).one(), PlatformStatus.DISABLED)
    lms.config_overrides = {"jwks_uri": jwks_server.base + "/other-keys"}
    assert _register(client, lms, "LMS").status_code == 200
    [stored] = stored_platforms(app)
    assert stored["status"] == "disabled"


# -- launches: a registration that records new deployments ---------------------------------


@pytest.mark.parametrize("deployment_id", ["d" * 256, "d" * 4000])
def test_an_overlong_new_deployment_id_is_a_400_not_a_500(
    app: Flask, client: FlaskClient, jwks_server: JwksServer, deployment_id: str
) -> None:
    lms = TestPlatform(jwks_server)
    lms.register(app, accept_new_deployments=True)
    client.environ_base["HTTP_ACCEPT"] = "application/json"
    login = lms.login(client, lti_deployment_id=None)
    token = lms.sign(lms.claims(login.nonce, **{CLAIM + "deployment_id": deployment_id}))
    response = lms.post_launch(client, token, login.state)
    not_500(response)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_deployment_id"
    with app.extensions["lifeline"].db.transaction() as session:
        assert [d.deployment_id for d in session.scalars(select(Deployment))] == [lms.deployment_id]


def test_a_login_with_an_unparsable_target_link_uri_is_a_400(
    app: Flask, client: FlaskClient, platform: TestPlatform
) -> None:
    for target in ("http://[::1/lti/launch", "https://lifeline.test:99999/lti/launch"):
        response = client.post(
            "/lti/login",
            data=platform.login_params(target_link_uri=target),
            headers={"Accept": "application/json"},
        )
        not_500(response)
        assert response.status_code == 400
        assert response.get_json()["error"] == "invalid_target_link_uri"


# -- the roster: what a platform's NRPS answers may hold -----------------------------------


@pytest.fixture
def services_platform(app: Flask, jwks_server: JwksServer, lms: LmsServices) -> TestPlatform:
    return register_platform(app, jwks_server, lms)


def _db(app: Flask) -> Database:
    db: Database = app.extensions["lifeline"].db
    return db


def _course_services(app: Flask) -> CourseServices:
    with _db(app).transaction() as session:
        row = session.scalars(select(CourseServices)).one()
        session.expunge(row)
        return row


def test_text_with_lone_surrogates_in_the_roster_is_cleaned_and_the_sync_completes(
    app: Flask,
    services_platform: TestPlatform,
    lms: LmsServices,
    worker: jobs.JobContext,
) -> None:
    """JSON may escape a lone surrogate ("\\ud800"), which PostgreSQL cannot store: one such
    member used to crash every sync of the course, for good."""
    lms.member(CTX, "ida", "Ida Instructor")
    lms.member(CTX, "alice", "Alice \ud800 Adams", email="al\udfffice@example.edu")
    lms.member(CTX, "bad\ud800id", "Nobody")
    lms.member(CTX, "bob", "Bob", roles=("Learner\udc00", "http://purl.imsglobal.org/x#Learner"))
    launch_as(app, services_platform, "instructor", "ida", name=drop(), **service_claims(lms, CTX))
    run_worker(worker)  # the first sync, enqueued by the launch
    row = _course_services(app)
    assert row.roster_error is None and row.roster_synced_at is not None
    assert row.roster_member_count == 3
    with _db(app).transaction() as session:
        people = {p.sub: (p.name, p.email) for p in session.scalars(select(Person))}
        roles = {
            sub: member.roles
            for sub, member in session.execute(
                select(Person.sub, CourseMember).join(
                    CourseMember, CourseMember.person_id == Person.id
                )
            )
        }
    # The name with a surrogate is dropped (its given name remains); so is the email.
    assert people["alice"] == ("Alice", "") and "bad\ud800id" not in people
    assert roles["bob"] == ["http://purl.imsglobal.org/x#Learner"]


def test_an_unparsable_next_link_fails_the_sync_clearly(
    app: Flask,
    services_platform: TestPlatform,
    lms: LmsServices,
    worker: jobs.JobContext,
) -> None:
    for user in ("ida", "alice", "bob"):
        lms.member(CTX, user, user.title())
    launch_as(app, services_platform, "instructor", "ida", name=drop(), **service_claims(lms, CTX))
    run_worker(worker)
    course_id = _course_services(app).course_id
    for link in ("http://[::1/next", "http://127.0.0.1:99999/next"):
        lms.next_override = link
        with jobs.bound(worker), pytest.raises(RosterSyncFailed) as caught:
            tasks.sync_roster(course_id, True)
        assert "next page" in str(caught.value)
        assert "next page" in (_course_services(app).roster_error or "")


def test_parse_links_and_members_never_raise_on_odd_values() -> None:
    assert nrps.parse_member({"user_id": "a\ud800b", "roles": []}) is None
    member = nrps.parse_member(
        {"user_id": "u", "roles": ["R\udfff", "Learner"], "name": "N\ud800", "status": "Inactive"}
    )
    assert member is not None
    assert (member.roles, member.name, member.status) == (("Learner",), "", "Inactive")


# -- the gradebook: what a platform's AGS answers may hold ---------------------------------


@dataclass
class CannedClient:
    """Stands in for a ``ServiceClient``: answers each call with the next canned reply."""

    replies: list[tuple[int, Mapping[str, str], Any]]
    calls: list[tuple[str, str]] = field(default_factory=list)
    policy: HttpPolicy = field(default_factory=HttpPolicy)

    def call(self, method: str, url: str, scopes: Any, **_: Any) -> Reply:
        self.calls.append((method, url))
        status, headers, body = self.replies.pop(0)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return Reply(status, headers, raw, url)


LINEITEMS = "https://lms.example.edu/ags/course-1/lineitems"
SPEC = ags.LineItemSpec("Tutoring participation", 1.0, "lifeline-participation", "lp")


@pytest.mark.parametrize(
    "item_id",
    ["http://[::1/lineitems/1", "https://lms.example.edu:99999/lineitems/1", "//[x/y"],
)
def test_an_unparsable_line_item_id_is_a_service_error(item_id: str) -> None:
    found = CannedClient([(200, {}, [{"tag": SPEC.tag, "resourceId": "lp", "id": item_id}])])
    with pytest.raises(ServiceError):
        ags.find_line_item(found, LINEITEMS, SPEC)  # type: ignore[arg-type]
    created = CannedClient([(201, {}, {"id": item_id})])
    with pytest.raises(ServiceError):
        ags.create_line_item(created, LINEITEMS, SPEC)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "link", ['<http://[::1/next>; rel="next"', "<https://lms.example.edu:99999/x>; rel=next"]
)
def test_an_unparsable_line_items_next_link_is_not_followed(link: str) -> None:
    client = CannedClient([(200, {"Link": link}, [])])
    assert ags.find_line_item(client, LINEITEMS, SPEC) is None  # type: ignore[arg-type]
    assert len(client.calls) == 1


# -- the token endpoint: a token that cannot go into a header ------------------------------


@dataclass
class CannedResponse:
    status_code: int
    body: bytes
    url: str
    headers: dict[str, str] = field(default_factory=dict)

    def iter_content(self, size: int) -> Iterator[bytes]:
        yield self.body

    def __enter__(self) -> CannedResponse:
        return self

    def __exit__(self, *args: object) -> None:
        return None


@dataclass
class CannedHttp:
    body: dict[str, Any]

    def request(self, method: str, url: str, **kwargs: Any) -> CannedResponse:
        return CannedResponse(200, json.dumps(self.body).encode(), url)


@pytest.mark.parametrize("token", ["tok\u20acen", "tok en", "tok\nen", "tok\x7fen"])
def test_an_access_token_that_cannot_be_sent_is_refused_and_not_cached(
    app: Flask, redis_client: redis.Redis, token: str
) -> None:
    """A token with characters no Authorization header can carry ended every later call of
    every worker in a UnicodeEncodeError (or InvalidHeader) until it expired from the cache."""
    from lti_tool.lti import keys

    with _db(app).transaction() as session:
        key = keys.signing_key(session)
    tokens = AccessTokens(
        redis_client,
        lambda: key,
        CannedHttp({"access_token": token, "expires_in": 3600}),  # type: ignore[arg-type]
        HttpPolicy(attempts=1),
    )
    endpoint = TokenEndpoint.of("https://lms.example.edu", "c1", LINEITEMS, None)
    with pytest.raises(TokenError, match="usable access_token"):
        tokens.token(endpoint, ["scope-a"])
    assert redis_client.keys("lifeline:lti:token:*") == []


# -- `lifeline platform config`: a base URL it cannot parse --------------------------------


@pytest.mark.parametrize(
    "url", ["https://[lifeline.example.edu", "https://lifeline.example.edu:99999", "http://[::1"]
)
def test_platform_config_refuses_an_unparsable_base_url(url: str) -> None:
    with pytest.raises(BaseUrlError):
        check_base_url(url)


def test_a_deeply_nested_platform_keyset_is_a_401_not_a_500(
    app: Flask, client: FlaskClient, platform: TestPlatform
) -> None:
    """A keyset URL comes from the platform (with dynamic registration, from its own
    configuration): its answer may be anything."""
    assert platform.route is not None
    platform.route.body = DEEP
    client.environ_base["HTTP_ACCEPT"] = "application/json"
    response = platform.launch(client)
    not_500(response)
    assert response.status_code == 401
    assert response.get_json()["error"] == "platform_keyset_invalid"


# -- text no page or row can hold: unpaired surrogates escaped in JSON ---------------------


def test_a_configuration_with_an_unpaired_surrogate_is_a_400_not_a_500(
    client: FlaskClient, app: Flask, lms_server: RegistrationServer
) -> None:
    """The product name is shown on the confirmation page, which is encoded as UTF-8."""
    lms = lms_server.moodle(
        unique("surrogate"), platform_overrides={"product_family_code": "Moo\ud800dle"}
    )
    response = client.get(lms.start_url())
    assert problem_code(response) == "configuration_not_json" and response.status_code == 400


def test_a_registration_answer_with_an_unpaired_surrogate_stores_nothing(
    client: FlaskClient, app: Flask, lms_server: RegistrationServer
) -> None:
    lms = lms_server.moodle(
        unique("surrogate-id"), register_body=json.dumps({"client_id": "c\udfff"}).encode()
    )
    handle = handle_of(client.get(lms.start_url()))
    response = client.post("/lti/register/confirm", data={"handle": handle, "name": "LMS"})
    assert problem_code(response) == "registration_not_json"
    assert stored_platforms(app) == []


def test_service_errors_hold_only_storable_text() -> None:
    """A line item id is the platform's text; the error naming it is stored on the report."""
    client = CannedClient([(201, {}, {"id": "https://elsewhere.example/items/\ud800"})])
    with pytest.raises(ServiceError) as caught:
        ags.create_line_item(client, LINEITEMS, SPEC)  # type: ignore[arg-type]
    caught.value.message.encode("utf-8")
    assert "elsewhere.example" in caught.value.message
    assert "\x00" not in ServiceError("a\x00b").message


# -- every new POST endpoint outside test_help_input's blueprints: hostile forms -----------

ADMIN_EMAIL, ADMIN_PASSWORD = "ada@lifeline.example", "correct horse battery staple"


def _snapshot(app: Flask) -> dict[str, list[Any]]:
    from lti_tool.models_registry import metadata

    with _db(app).engine.connect() as conn:
        return {
            table.name: [
                tuple(row)
                for row in conn.execute(select(table).order_by(*table.primary_key.columns))
            ]
            for table in metadata().sorted_tables
            if table.name not in {"admin_sessions", "admin_accounts"}  # last seen, failures
        }


def _csrf(client: FlaskClient) -> str:
    client.get("/admin/login")
    with client.session_transaction() as session:
        return str(session["csrf_token"])


@pytest.fixture
def signed_in(app: Flask) -> FlaskClient:
    from lti_tool.admin import accounts

    with _db(app).transaction() as session:
        accounts.create_admin(session, ADMIN_EMAIL, ADMIN_PASSWORD)
    client = app.test_client()
    response = client.post(
        "/admin/login",
        data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "csrf_token": _csrf(client)},
    )
    assert response.status_code == 303
    return client


# endpoint -> (URL, the field it reads first); {pid} is a pending platform's id
POSTS = {
    "admin.login": ("/admin/login", "email"),
    "admin.logout": ("/admin/logout", "anything"),
    "admin.platform_status": ("/admin/platforms/{pid}/status", "action"),
    "admin.platform_deployment": ("/admin/platforms/{pid}/deployments", "deployment_id"),
    "admin.platform_new_deployments": ("/admin/platforms/{pid}/new-deployments", "accept"),
    "admin.registration_setting": ("/admin/settings/registration", "registration_status"),
    "registration.confirm": ("/lti/register/confirm", "handle"),
    "lti.launch_continue": ("/lti/launch/continue", "state"),
}
HOSTILE = [
    pytest.param("a\x00b", id="nul"),
    pytest.param("x" * 300_000, id="oversized"),
    pytest.param([" ", "approve"], id="array"),  # the first value counts, and is blank
    pytest.param("\ufffd\u202e" + "é" * 3000, id="odd-unicode"),
]


def test_every_new_post_endpoint_has_hostile_cases(app: Flask) -> None:
    new = {
        rule.endpoint
        for rule in app.url_map.iter_rules()
        if "POST" in (rule.methods or set())
        and rule.endpoint.split(".")[0] in {"admin", "registration"}
    }
    assert new | {"lti.launch_continue"} == set(POSTS)


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_forms_to_new_endpoints_are_4xx_and_change_nothing(
    app: Flask, signed_in: FlaskClient, value: Any
) -> None:
    from lti_tool.lti.registry import add_platform

    with _db(app).transaction() as session:
        pid = add_platform(
            session,
            name="Pending LMS",
            issuer="https://pending.example",
            client_id="c",
            auth_login_url="https://pending.example/auth",
            auth_token_url="https://pending.example/token",
            keyset_url="https://pending.example/jwks",
            deployment_ids=["dep-1"],
            status=PlatformStatus.PENDING,
        ).id
    before = _snapshot(app)
    for endpoint, (url, name) in sorted(POSTS.items()):
        if endpoint == "admin.logout":
            continue  # reads no field: a valid token signs out whatever else is sent
        for accept in ("application/json", "text/html"):
            response = signed_in.post(
                url.format(pid=pid),
                data={name: value, "csrf_token": _csrf(signed_in)},
                headers={"Accept": accept},
            )
            not_500(response)
            assert 400 <= response.status_code < 500, (endpoint, response.status_code)
            assert _snapshot(app) == before, endpoint
    # Still signed in, and signing out with hostile extra fields works.
    response = signed_in.post(
        "/admin/logout", data={"anything": value, "csrf_token": _csrf(signed_in)}
    )
    assert response.status_code in (303, 400, 413), response.status_code


@pytest.mark.parametrize(
    "query",
    [
        "openid_configuration=a%00b",
        "openid_configuration=%FF%FE%FD",
        "openid_configuration=https%3A%2F%2Fa.example%2F&openid_configuration=https%3A%2F%2Fb",
        "openid_configuration=" + "x" * 20_000,
        "openid_configuration=https%3A%2F%2Flms.example.edu%2Fc&registration_token=t%00k",
        "openid_configuration=https%3A%2F%2Flms.example.edu%2Fc&registration_token=" + "t" * 9000,
        "openid_configuration=https%3A%2F%2Flms.example.edu%2Fc&registration_token=%E2%82%AC",
    ],
)
def test_hostile_registration_links_are_a_400(client: FlaskClient, query: str) -> None:
    response = client.get("/lti/register?" + query)
    not_500(response)
    assert response.status_code == 400


# -- the admin page: two admins acting on one platform at once -----------------------------


def test_approve_and_disable_at_once_never_lose_the_disable(
    app: Flask, signed_in: FlaskClient
) -> None:
    """Both actions apply to a pending platform. One admin's disable is committing while the
    other presses Approve: the approve must see "disabled" (409), not overwrite it."""
    import threading
    import time

    from sqlalchemy.orm import Session as OrmSession

    from lti_tool.lti.registry import add_platform

    with _db(app).transaction() as session:
        pid = add_platform(
            session,
            name="Contested LMS",
            issuer="https://contested.example",
            client_id="c",
            auth_login_url="https://contested.example/auth",
            auth_token_url="https://contested.example/token",
            keyset_url="https://contested.example/jwks",
            deployment_ids=[],
            status=PlatformStatus.PENDING,
        ).id
    token = _csrf(signed_in)
    answers: list[int] = []
    with OrmSession(_db(app).engine) as first:
        row = first.get(Platform, pid, with_for_update=True)  # the other admin's disable
        assert row is not None
        row.status = PlatformStatus.DISABLED.value
        first.flush()

        def approve() -> None:
            response = signed_in.post(
                f"/admin/platforms/{pid}/status", data={"action": "approve", "csrf_token": token}
            )
            answers.append(response.status_code)

        second = threading.Thread(target=approve)
        second.start()
        time.sleep(0.5)  # the approve reaches the row and waits for the disable
        first.commit()
        second.join(timeout=10)
    assert answers == [409]
    with _db(app).transaction() as session:
        platform = session.get(Platform, pid)
        assert platform is not None and platform.status == "disabled"


def test_the_admin_page_shows_where_a_platform_gets_its_keys_and_tokens(
    app: Flask, signed_in: FlaskClient
) -> None:
    """Approving a registration trusts its keyset URL (launches) and token URL (where
    Lifeline sends its signed client assertions): the admin must see both to approve."""
    from lti_tool.lti.registry import add_platform

    with _db(app).transaction() as session:
        add_platform(
            session,
            name="Shown LMS",
            issuer="https://shown.example",
            client_id="c",
            auth_login_url="https://shown.example/auth",
            auth_token_url="https://elsewhere.example/token",
            keyset_url="https://keys.example/jwks",
            deployment_ids=[],
            status=PlatformStatus.PENDING,
        )
    page = signed_in.get("/admin/").get_data(as_text=True)
    assert "https://keys.example/jwks" in page and "https://elsewhere.example/token" in page


def test_a_registration_cannot_borrow_another_platforms_token_endpoint(
    client: FlaskClient, app: Flask, lms_server: RegistrationServer
) -> None:
    """A platform registered dynamically that names another LMS's token URL would get
    Lifeline to fetch that LMS's access tokens and send them to its own service URLs."""
    victim = lms_server.moodle(unique("victim"))
    assert _register(client, victim, "Victim LMS").status_code == 200
    [stored] = stored_platforms(app)
    attacker = lms_server.moodle(unique("attacker"))
    attacker.config_overrides = {"token_endpoint": stored["token"]}
    refused = _register(client, attacker, "Attacker LMS")
    body = not_500(refused)
    assert refused.status_code == 400 and "belongs to another registered platform" in body
    assert [p["issuer"] for p in stored_platforms(app)] == [victim.issuer]
