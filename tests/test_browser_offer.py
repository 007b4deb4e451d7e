"""Live detection in a real Chromium: in the demo, a tutor is available, a learner's page sits
in the LMS iframe, the page SDK reports failing submissions, and the offer appears in the
learner's page without a reload (the learner's offer stream); accepting it opens the request
status page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.browser import DemoServer, launch_chromium, open_tool_as, running_demo

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    yield from running_demo(tmp_path_factory.mktemp("offer-demo"))


def test_failing_submissions_bring_an_offer_live_and_accepting_opens_a_request(
    demo: DemoServer, tmp_path: Path
) -> None:
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            tutor_page = browser.new_context().new_page()
            learner_page = browser.new_context().new_page()

            # A tutor is available, so the course has capacity for an offer.
            tutor = open_tool_as(tutor_page, demo.base, "tutor")
            tutor.get_by_test_id("open-dashboard-here").click()
            tutor.get_by_test_id("availability-select").select_option("available")
            with tutor_page.expect_response(lambda r: r.url.endswith("/tutor/")):
                tutor.get_by_test_id("availability-save").click()
            expect(tutor.get_by_test_id("queue-empty")).to_be_visible()

            learner = open_tool_as(learner_page, demo.base, "learner")
            expect(learner.get_by_test_id("learner-home")).to_be_visible()
            offer = learner.get_by_test_id("offer")
            expect(offer).to_be_hidden()
            frame = learner_page.frame(name="tool")
            assert frame is not None
            frame.evaluate("window.__notReloaded = true")
            frame.add_script_tag(url=demo.base + "/static/lifeline.js")

            # Four failures: below the default threshold, nothing shows.
            frame.evaluate(
                """async () => {
                  Lifeline.init({flushMs: 0});  // the token from data-sdk-token
                  for (let i = 0; i < 4; i++) Lifeline.submit({correct: false});
                  await Lifeline.flush();
                  return Lifeline.stats();
                }"""
            )
            learner_page.wait_for_timeout(1000)
            expect(offer).to_be_hidden()

            frame.evaluate(
                """async () => {
                  Lifeline.error({type: "NameError", message: "name 'fizz' is not defined"});
                  await Lifeline.flush();
                }"""
            )
            expect(offer).to_be_visible(timeout=5_000)  # live: the hub's safety poll is 15 s
            expect(learner.get_by_test_id("offer-headline")).to_have_text(
                "Looks like this one is fighting back. Want a tutor?"
            )
            assert frame.evaluate("window.__notReloaded === true"), "the page must not reload"
            learner_page.screenshot(path=str(tmp_path / "learner-offer.png"))

            learner.get_by_test_id("offer-accept").click()
            expect(learner.get_by_test_id("queue-position")).to_have_text("1", timeout=10_000)
            assert "/help/" in frame.url
            # The tutor's queue shows the request, with the question Lifeline wrote for them.
            item = tutor.get_by_test_id("queue-item")
            expect(item).to_have_count(1, timeout=10_000)
            expect(item.get_by_test_id("queue-question")).to_contain_text("Lifeline noticed")
        finally:
            browser.close()
