"""The demo, end to end in a real Chromium: ``lifeline demo`` started as a user would, its
demo LMS page, and Lifeline launched in the LMS's iframe through /lti/login and /lti/launch.

Screenshots go to ``$LIFELINE_SCREENSHOTS`` if set, else to a pytest temporary directory.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    FrameLocator,
    Page,
    Response,
    expect,
    sync_playwright,
)

from lti_tool.demo_lms.platform import COURSE, EXERCISES, USERS
from tests.browser import DemoServer, Traffic, launch_chromium

pytestmark = pytest.mark.browser

LANDING = {"learner": "learner-home", "instructor": "instructor-home", "tutor": "tutor-home"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    server = DemoServer(tmp_path_factory.mktemp("demo"))
    server.start()
    yield server
    server.stop()
    assert (server.workdir / "instance" / "lifeline.db").exists(), server.log()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("LIFELINE_SCREENSHOTS")
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("screenshots")


def tool(page: Page) -> FrameLocator:
    return page.frame_locator("iframe[name=tool]")


def launch(page: Page, traffic: Traffic, user: str, button: str) -> FrameLocator:
    """Pick the user, click the item; check the launch went through the LTI endpoints."""
    traffic.clear()
    page.get_by_test_id("demo-user").select_option(user)
    with page.expect_response(_is_launch_post) as launched:
        page.get_by_test_id(button).click()
    assert launched.value.status == 200
    frame = tool(page)
    frame.get_by_test_id(LANDING[user]).wait_for()
    traffic.assert_in_order(
        ("GET", "/demo/start"),
        ("POST", "/lti/login"),
        ("GET", "/demo/auth"),
        ("POST", "/lti/launch"),
    )
    assert traffic.statuses[("POST", "/lti/launch")] == 200
    return frame


def _is_launch_post(response: Response) -> bool:
    return response.request.method == "POST" and urlsplit(response.url).path == "/lti/launch"


def assert_tool_cookies(context: BrowserContext, base: str) -> None:
    cookies = {c["name"]: c for c in context.cookies(base)}
    session = cookies.get("lifeline_session")
    assert session is not None, f"no Lifeline session cookie: {sorted(cookies)}"
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Lax"  # plain-HTTP demo; SameSite=None; Secure over HTTPS
    # The one-time state cookie of each login is gone once its launch has been accepted.
    assert not [name for name in cookies if name.startswith("lifeline-state-")], sorted(cookies)


def test_each_role_lands_on_its_page_for_each_exercise(
    demo: DemoServer, context: BrowserContext, page: Page, shots: Path
) -> None:
    traffic = Traffic()
    traffic.attach(page)
    page.goto(demo.base + "/demo/")
    expect(page.get_by_test_id("demo-course-title")).to_have_text(COURSE["title"])
    expect(page.get_by_test_id("tool-empty")).to_be_visible()

    for user in ("learner", "instructor", "tutor"):
        for exercise, title in EXERCISES.items():
            frame = launch(page, traffic, user, f"launch-{exercise}")
            home = frame.get_by_test_id(LANDING[user])
            # expect() retries: the frame may still show the previous page for a moment.
            expect(home.get_by_test_id("exercise-title")).to_have_text(title)
            expect(home.get_by_test_id("course-title")).to_have_text(COURSE["title"])
            expect(home.get_by_test_id("person-name")).to_have_text(USERS[user].name)
            expect(frame.get_by_test_id("role")).to_have_text(user, ignore_case=True)
            expect(page.get_by_test_id("tool-status")).to_contain_text(title)
        page.screenshot(path=str(shots / f"demo-{user}.png"))
    expect(page.get_by_test_id("tool-empty")).to_be_hidden()
    assert_tool_cookies(context, demo.base)


def test_deep_linking_places_a_link_that_learners_open(
    demo: DemoServer, context: BrowserContext, page: Page, shots: Path
) -> None:
    traffic = Traffic()
    traffic.attach(page)
    page.goto(demo.base + "/demo/")
    placed_title = f"Tutor help: FizzBuzz {uuid.uuid4().hex[:6]}"

    page.get_by_test_id("launch-deep-link").click()
    frame = tool(page)
    frame.get_by_test_id("deep-link-title").fill(placed_title)
    frame.get_by_test_id("deep-link-text").fill("A tutor walks you through it.")
    page.screenshot(path=str(shots / "demo-deep-link.png"))
    frame.get_by_test_id("deep-link-submit").click()
    result = frame.get_by_test_id("deep-link-result")
    result.wait_for()
    expect(result.get_by_test_id("placed-item")).to_contain_text(placed_title)
    traffic.assert_in_order(
        ("POST", "/lti/login"),
        ("POST", "/lti/launch"),
        ("POST", "/lti/deep-link/" + _launch_id(traffic)),
        ("POST", "/demo/deep-link-return"),
    )
    assert traffic.statuses[("POST", "/demo/deep-link-return")] == 200
    page.screenshot(path=str(shots / "demo-deep-link-result.png"))

    # Back in the course, the LMS lists the placed link; a learner opens it.
    frame.get_by_test_id("back-to-course").click()
    page.wait_for_url(demo.base + "/demo/")
    placed = page.locator("[data-testid^='launch-placed-']", has_text=placed_title)
    expect(placed).to_have_count(1)
    testid = placed.get_attribute("data-testid")
    assert testid is not None
    frame = launch(page, traffic, "learner", testid)
    home = frame.get_by_test_id("learner-home")
    expect(home.get_by_test_id("exercise-title")).to_have_text(placed_title)
    expect(home.get_by_test_id("course-title")).to_have_text(COURSE["title"])
    page.screenshot(path=str(shots / "demo-placed-learner.png"))
    assert_tool_cookies(context, demo.base)


def _launch_id(traffic: Traffic) -> str:
    posts = [path for method, path in traffic.requests if path.startswith("/lti/deep-link/")]
    assert len(posts) == 1, traffic.requests
    return posts[0].rsplit("/", 1)[1]


def test_a_tool_page_outside_its_launch_explains_itself(
    demo: DemoServer, page: Page, shots: Path
) -> None:
    """A launch page opened in a browser that did not make the launch: a clear 403 page."""
    response = page.goto(demo.base + "/app/" + uuid.uuid4().hex)
    assert response is not None and response.status == 403
    error = page.get_by_test_id("error")
    expect(error).to_have_attribute("data-status", "403")
    expect(error.get_by_test_id("error-detail")).to_contain_text("another browser")
    expect(page.get_by_test_id("brand")).to_be_visible()
    page.screenshot(path=str(shots / "demo-error.png"))
