"""The live queue in a real Chromium: a learner in the demo LMS iframe asks for help, a tutor
in a second browser context sees it appear without reloading, claims it, and a chat message
goes both ways. Runs ``lifeline demo`` as a user would (SQLite, in-process Redis stand-in)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.browser import DemoServer, launch_chromium, open_tool_as, running_demo

pytestmark = pytest.mark.browser
QUESTION = "My FizzBuzz prints Fizz for 15 instead of FizzBuzz; the check order looks right."


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    yield from running_demo(tmp_path_factory.mktemp("queue-demo"))


def test_learner_asks_tutor_sees_it_live_claims_and_they_chat(
    demo: DemoServer, tmp_path: Path
) -> None:
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            tutor_page = browser.new_context().new_page()
            learner_page = browser.new_context().new_page()
            dashboard_loads: list[str] = []
            tutor_page.on(
                "response",
                lambda r: dashboard_loads.append(r.url) if r.url.endswith("/tutor/") else None,
            )

            tutor = open_tool_as(tutor_page, demo.base, "tutor")
            expect(tutor.get_by_test_id("tutor-home")).to_be_visible()
            tutor.get_by_test_id("open-dashboard-here").click()
            expect(tutor.get_by_test_id("tutor-dashboard")).to_be_visible()
            tutor.get_by_test_id("availability-select").select_option("available")
            with tutor_page.expect_response(lambda r: r.url.endswith("/tutor/")):
                tutor.get_by_test_id("availability-save").click()
            expect(tutor.get_by_test_id("queue-empty")).to_be_visible()
            expect(tutor.locator("body[data-live=stream]")).to_have_count(1, timeout=10_000)
            loads_before = len(dashboard_loads)

            learner = open_tool_as(learner_page, demo.base, "learner")
            learner.get_by_test_id("get-tutor").click()
            learner.get_by_test_id("help-question").fill(QUESTION)
            learner.get_by_test_id("help-submit").click()
            expect(learner.get_by_test_id("queue-position")).to_have_text("1")
            expect(learner.get_by_test_id("wait-estimate")).not_to_be_empty()

            # The tutor's dashboard shows it without a reload.
            item = tutor.get_by_test_id("queue-item")
            expect(item).to_have_count(1, timeout=10_000)
            expect(item.get_by_test_id("queue-question")).to_have_text(QUESTION)
            assert len(dashboard_loads) == loads_before, "the dashboard must not reload"
            tutor_page.screenshot(path=str(tmp_path / "tutor-dashboard.png"))

            tutor.get_by_test_id("claim").click()
            expect(tutor.get_by_test_id("tutor-session")).to_be_visible()
            expect(learner.get_by_test_id("tutor-name")).to_have_text("Alan Turing", timeout=10_000)
            expect(learner.get_by_test_id("meeting-link")).to_have_attribute(
                "href", re.compile(r"^https://meet\.jit\.si/lifeline-")
            )

            tutor.get_by_test_id("chat-input").fill("Hi Ada, which condition do you test first?")
            tutor.get_by_test_id("chat-send").click()
            expect(learner.get_by_test_id("chat-message").last).to_contain_text(
                "which condition do you test first?", timeout=10_000
            )
            learner.get_by_test_id("chat-input").fill("Oh! I check 3 before 15.")
            learner.get_by_test_id("chat-send").click()
            expect(tutor.get_by_test_id("chat-message").last).to_contain_text(
                "I check 3 before 15", timeout=10_000
            )
            learner_page.screenshot(path=str(tmp_path / "learner-session.png"))

            tutor.get_by_test_id("resolve-outcome").select_option("solved")
            tutor.get_by_test_id("resolve").click()
            expect(learner.get_by_test_id("rating-form")).to_be_visible(timeout=10_000)
            learner.get_by_test_id("rating-5").check()
            learner.get_by_test_id("rating-submit").click()
            expect(learner.get_by_test_id("rating-thanks")).to_be_visible()
        finally:
            browser.close()
