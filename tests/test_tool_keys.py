"""The tool's signing keys: generated on first use, published on /lti/jwks, rotated with grace."""

from __future__ import annotations

import datetime as dt
import json

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from lti_tool.db import utcnow
from lti_tool.lti import keys
from lti_tool.lti.models import ToolKey
from tests.platform import TestPlatform
from tests.test_deep_linking import autopost, deep_link_launch, placement_form

GRACE = 3600


def db_keys(app: Flask) -> list[ToolKey]:
    with app.extensions["lifeline"].db.transaction() as session:
        found = list(session.scalars(select(ToolKey).order_by(ToolKey.id)))
        session.expunge_all()
    return found


def rotate(app: Flask, grace: int = GRACE) -> str:
    with app.extensions["lifeline"].db.transaction() as session:
        return keys.rotate(session, grace).kid


def published_kids(client: FlaskClient) -> list[str]:
    response = client.get("/lti/jwks")
    assert response.status_code == 200
    return [k["kid"] for k in response.get_json()["keys"]]


def test_jwks_generates_a_key_on_first_use_and_keeps_it(app: Flask, client: FlaskClient) -> None:
    assert db_keys(app) == []
    response = client.get("/lti/jwks")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "public, max-age=300"
    (jwk,) = response.get_json()["keys"]
    assert set(jwk) == {"kty", "e", "n", "kid", "alg", "use"}
    assert (jwk["kty"], jwk["alg"], jwk["use"], jwk["e"]) == ("RSA", "RS256", "sig", "AQAB")
    (stored,) = db_keys(app)
    assert stored.kid == jwk["kid"]
    assert stored.retire_after is None
    assert "PRIVATE" in stored.private_pem
    assert "PRIVATE" not in response.get_data(as_text=True)
    assert '"d"' not in response.get_data(as_text=True)
    # The published key is the public half of the stored private key.
    token = jwt.encode({"x": 1}, stored.private_pem, algorithm="RS256")
    assert jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=["RS256"]) == {"x": 1}
    # Later requests publish the same key; no new key is made.
    assert published_kids(client) == [jwk["kid"]]
    assert len(db_keys(app)) == 1


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # The example of RFC 7638, section 3.1.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tS"
        "oc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0"
        "_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
        "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert keys.thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_rotation_keeps_the_old_key_published_for_the_grace_period(
    app: Flask, client: FlaskClient
) -> None:
    (old,) = published_kids(client)
    before = utcnow()
    new = rotate(app)
    after = utcnow()
    assert new != old
    assert published_kids(client) == [old, new]

    stored = {k.kid: k for k in db_keys(app)}
    retire_after = stored[old].retire_after
    assert retire_after is not None
    assert before + dt.timedelta(seconds=GRACE) <= retire_after
    assert retire_after <= after + dt.timedelta(seconds=GRACE)
    assert stored[new].retire_after is None

    with app.extensions["lifeline"].db.transaction() as session:
        assert keys.signing_key(session).kid == new
        assert keys.current_key(session).kid == new  # type: ignore[union-attr]
        just_before = [k.kid for k in keys.published_keys(session, retire_after)]
        after_grace = [k.kid for k in keys.published_keys(session, retire_after + dt.timedelta(1))]
    assert just_before == [new]  # retire_after itself is no longer "in the future"
    assert after_grace == [new]
    with app.extensions["lifeline"].db.transaction() as session:
        during = [
            k.kid for k in keys.published_keys(session, retire_after - dt.timedelta(seconds=1))
        ]
    assert during == [old, new]

    # Once the grace period is over /lti/jwks publishes only the new key.
    with app.extensions["lifeline"].db.transaction() as session:
        session.execute(
            update(ToolKey)
            .where(ToolKey.kid == old)
            .values(retire_after=utcnow() - dt.timedelta(seconds=1))
        )
    assert published_kids(client) == [new]


def test_rotation_with_zero_grace_unpublishes_at_once(app: Flask, client: FlaskClient) -> None:
    (first,) = published_kids(client)
    second = rotate(app)
    third = rotate(app, grace=0)
    # ``first`` was retired by the first rotation (still in its grace), ``second`` at once.
    assert published_kids(client) == [first, third]
    retired = {k.kid: k.retire_after for k in db_keys(app)}
    assert retired[third] is None
    assert retired[second] is not None and retired[second] <= utcnow()


def test_jwks_documents_are_valid_json_web_keys(app: Flask, client: FlaskClient) -> None:
    published_kids(client)
    rotate(app)
    for jwk in client.get("/lti/jwks").get_json()["keys"]:
        assert (jwk["alg"], jwk["use"]) == ("RS256", "sig")
        assert keys.thumbprint(jwk) == jwk["kid"]
        assert jwt.PyJWK(json.loads(json.dumps(jwk))).key_id == jwk["kid"]


def test_deep_linking_response_is_signed_with_the_newest_key(
    app: Flask, client: FlaskClient, platform: TestPlatform
) -> None:
    (old,) = published_kids(client)
    new = rotate(app)
    page = deep_link_launch(platform, client).get_data(as_text=True)
    url, csrf = placement_form(page)
    response = client.post(url, data={"csrf_token": csrf, "title": "Lifeline help"})
    assert response.status_code == 200
    token = autopost(response.get_data(as_text=True))[1]
    assert jwt.get_unverified_header(token)["kid"] == new

    published = {k["kid"]: k for k in client.get("/lti/jwks").get_json()["keys"]}
    assert set(published) == {old, new}
    claims = jwt.decode(
        token,
        jwt.PyJWK(published[new]).key,
        algorithms=["RS256"],
        audience=platform.issuer,
    )
    assert claims["iss"] == platform.client_id
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            token, jwt.PyJWK(published[old]).key, algorithms=["RS256"], audience=platform.issuer
        )
