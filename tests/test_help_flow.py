"""The whole loop through HTTP: a learner asks, a tutor claims, they chat, it is resolved and
rated; plus the rules that keep the queue fair and consistent."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import select

from lti_tool.help.models import HelpEvent, HelpRequest
from tests.helpers import launch_as
from tests.platform import TestPlatform

QUESTION = "My loop prints 1 to 9 but I need 1 to 10, and I get no error at all."


def test_learner_asks_tutor_claims_chats_resolves_and_learner_rates(
    app: Flask, platform: TestPlatform
) -> None:
    ada = launch_as(app, platform, "learner", "ada", "Ada Learner")
    tutor = launch_as(app, platform, "tutor", "ta-1", "Tim Tutor")

    form = ada.get(f"/l/{ada.launch_id}/help/new")
    assert form.status_code == 200 and 'data-testid="help-form"' in form.get_data(as_text=True)
    created = ada.post(f"/l/{ada.launch_id}/help", {"question": QUESTION, "tried": "range(1, 10)"})
    assert created.status_code == 200, created.get_data(as_text=True)
    request_id = created.get_json()["request_id"]

    again = ada.post(f"/l/{ada.launch_id}/help", {"question": QUESTION})
    assert again.get_json()["request_id"] == request_id  # a double click finds the same request

    status = ada.get(f"/l/{ada.launch_id}/help/{request_id}/status.json").get_json()
    assert (status["status"], status["position"], status["ahead"]) == ("queued", 1, 0)

    queue = tutor.get("/tutor/queue.json").get_json()
    assert [item["request_id"] for item in queue["queue"]] == [request_id]
    assert queue["queue"][0]["learner"] == "Ada Learner"

    claimed = tutor.post(f"/tutor/requests/{request_id}/claim")
    assert claimed.status_code == 200, claimed.get_data(as_text=True)
    status = ada.get(f"/l/{ada.launch_id}/help/{request_id}/status.json").get_json()
    assert status["status"] == "claimed" and status["tutor_name"] == "Tim Tutor"
    assert status["meeting_url"].startswith("https://meet.jit.si/lifeline-")

    assert (
        ada.post(f"/l/{ada.launch_id}/help/{request_id}/chat", {"body": "hi!"}).status_code == 200
    )
    assert tutor.post(f"/tutor/requests/{request_id}/chat", {"body": "hello"}).status_code == 200
    log = ada.get(f"/l/{ada.launch_id}/help/{request_id}/messages.json").get_json()["messages"]
    assert [(m["author"], m["body"]) for m in log] == [("learner", "hi!"), ("tutor", "hello")]

    resolved = tutor.post(
        f"/tutor/requests/{request_id}/resolve", {"outcome": "solved", "note": "off by one"}
    )
    assert resolved.get_json()["status"] == "resolved"
    rated = ada.post(f"/l/{ada.launch_id}/help/{request_id}/rate", {"rating": "5", "comment": "!"})
    assert rated.status_code == 200 and rated.get_json()["rating"] == 5

    with app.extensions["lifeline"].db.transaction() as session:
        kinds = [e.kind for e in session.scalars(select(HelpEvent).order_by(HelpEvent.id))]
        row = session.get(HelpRequest, request_id)
        assert row is not None and row.tutor_note == "off by one" and row.outcome == "solved"
    assert kinds == [
        "request.created",
        "request.claimed",
        "chat.message",
        "chat.message",
        "request.resolved",
        "request.rated",
    ]


def test_bad_input_is_a_clear_4xx_and_changes_nothing(app: Flask, platform: TestPlatform) -> None:
    ada = launch_as(app, platform, "learner", "ada")
    url = f"/l/{ada.launch_id}/help"
    for data, needle in [
        ({"question": ""}, "Write your question"),
        ({"question": "segfault"}, "Say a little more"),
        ({"question": "x" * 2001}, "under 2000"),
        ({"question": QUESTION, "skills": "astrology"}, "not one of this course's skills"),
    ]:
        response = ada.post(url, data)
        assert response.status_code == 400, data
        assert needle in response.get_json()["error"]
    with app.extensions["lifeline"].db.transaction() as session:
        assert session.scalars(select(HelpRequest)).all() == []


def test_second_claim_gets_409_naming_the_holder(app: Flask, platform: TestPlatform) -> None:
    ada = launch_as(app, platform, "learner", "ada")
    first = launch_as(app, platform, "tutor", "ta-1", "First Tutor")
    second = launch_as(app, platform, "tutor", "ta-2", "Second Tutor")
    request_id = ada.post(f"/l/{ada.launch_id}/help", {"question": QUESTION}).get_json()[
        "request_id"
    ]
    assert first.post(f"/tutor/requests/{request_id}/claim").status_code == 200
    lost = second.post(f"/tutor/requests/{request_id}/claim")
    assert lost.status_code == 409
    assert lost.get_json()["holder"] == "First Tutor"
    resolve_other = second.post(f"/tutor/requests/{request_id}/resolve", {"outcome": "solved"})
    assert resolve_other.status_code == 403


def test_release_keeps_the_original_place(app: Flask, platform: TestPlatform) -> None:
    ada = launch_as(app, platform, "learner", "ada")
    bob = launch_as(app, platform, "learner", "bob")
    tutor = launch_as(app, platform, "tutor", "ta-1")
    first = ada.post(f"/l/{ada.launch_id}/help", {"question": QUESTION}).get_json()["request_id"]
    second = bob.post(f"/l/{bob.launch_id}/help", {"question": QUESTION}).get_json()["request_id"]
    assert tutor.post(f"/tutor/requests/{first}/claim").status_code == 200
    bob_status = bob.get(f"/l/{bob.launch_id}/help/{second}/status.json").get_json()
    assert bob_status["position"] == 1
    assert tutor.post(f"/tutor/requests/{first}/release").status_code == 200
    order = [i["request_id"] for i in tutor.get("/tutor/queue.json").get_json()["queue"]]
    assert order == [first, second]
    stale = tutor.post(f"/tutor/requests/{first}/claim", {"version": "1"})
    assert (
        stale.status_code == 409 and "changed since your page loaded" in stale.get_json()["error"]
    )
