"""Small helpers for help-queue tests: people who launch through the real LTI path."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from tests.platform import CLAIM, ROLE_INSTRUCTOR, ROLE_LEARNER, ROLE_TA, TestPlatform

ROLES = {
    "learner": [ROLE_LEARNER],
    "instructor": [ROLE_INSTRUCTOR],
    "tutor": [ROLE_INSTRUCTOR, ROLE_TA],
}


@dataclass
class Actor:
    client: FlaskClient
    launch_id: str

    def csrf(self) -> str:
        with self.client.session_transaction() as session:
            token = session.get("csrf_token")
        if not token:
            page = self.client.get(f"/app/{self.launch_id}")
            match = re.search(r'name="csrf-token" content="([^"]+)"', page.get_data(as_text=True))
            assert match, "no CSRF token on the landing page"
            token = match.group(1)
        return str(token)

    def post(self, url: str, data: dict[str, Any] | None = None, json: bool = True) -> Any:
        headers = {"X-CSRF-Token": self.csrf()}
        if json:
            headers["Accept"] = "application/json"
        return self.client.post(url, data=data or {}, headers=headers)

    def get(self, url: str, json: bool = False) -> Any:
        return self.client.get(url, headers={"Accept": "application/json"} if json else {})


def launch_as(
    app: Flask,
    platform: TestPlatform,
    role: str,
    sub: str,
    name: str = "",
    context_id: str = "course-1",
    resource_link: str = "link-1",
    **claims: Any,
) -> Actor:
    client = app.test_client()
    overrides: dict[str, Any] = {
        "sub": sub,
        "name": name or sub.title(),
        CLAIM + "roles": ROLES[role],
        CLAIM + "context": {"id": context_id, "title": f"Course {context_id}", "label": context_id},
        CLAIM + "resource_link": {"id": resource_link, "title": f"Exercise {resource_link}"},
    }
    overrides.update(claims)
    response = platform.launch(client, **overrides)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    with client.session_transaction() as session:
        launch_id = session["launches"][-1]
    return Actor(client, launch_id)
