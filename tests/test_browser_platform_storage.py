"""Launches in a real Chromium that refuses Lifeline's cookies in the LMS's iframe.

The demo LMS runs at ``http://localhost:PORT`` and Lifeline at ``http://127.0.0.1:PORT``: two
sites, so Lifeline is a third-party frame, as in a real LMS.

Third-party cookies are blocked: a Playwright context is an off-the-record profile, where
Chromium 156 blocks them by default as Incognito does (``--test-third-party-cookie-phaseout``
changes nothing here; the profile preference ``cookie_controls_mode`` 0 would allow them).
Every test's context is first checked by ``CookieProbe``: a ``SameSite=None; Secure`` cookie
set by a 127.0.0.1 frame in a localhost page must be refused (the same cookie set first-party
must work), so no test can pass in a browser that would have kept the cookie. Over plain HTTP
Lifeline's own cookies are ``SameSite=Lax``, which a cross-site frame neither sets nor sends
either; the tests also check that the browser holds no Lifeline cookie at all, so a launch that
works got there through platform storage or the new window.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    FrameLocator,
    Page,
    Request,
    Route,
    expect,
    sync_playwright,
)

from lti_tool.demo_lms.platform import EXERCISES, STORAGE_FRAME, USERS
from tests.browser import (
    DemoServer,
    Traffic,
    launch_chromium,
    open_tool_as,
    running_demo,
)

pytestmark = pytest.mark.browser

QUESTION = "My loop prints 1 to 9 but I need 1 to 10; there is no error."


# -- a probe: does this browser really refuse third-party cookies? --------------------------


class CookieProbe:
    """A page on ``localhost`` framing ``127.0.0.1``, which sets the most permissive cookie a
    browser can refuse (``SameSite=None; Secure``, unpartitioned) and shows what comes back."""

    def __init__(self) -> None:
        probe = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                port = probe.port
                headers = {"Content-Type": "text/html"}
                if self.path == "/top":
                    body = f'<iframe name="probe" src="http://127.0.0.1:{port}/set"></iframe>'
                elif self.path == "/set":
                    headers["Set-Cookie"] = "probe=1; SameSite=None; Secure; Path=/"
                    body = '<script>location.replace("/check")</script>'
                else:
                    body = "cookie:" + (self.headers.get("Cookie") or "none")
                data = body.encode()
                self.send_response(200)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port: int = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def assert_blocked(self, context: BrowserContext) -> None:
        page = context.new_page()
        try:
            # First party, the cookie works (Chromium allows Secure cookies on loopback)...
            page.goto(f"http://127.0.0.1:{self.port}/set")
            expect(page.locator("body")).to_have_text("cookie:probe=1")
            context.clear_cookies()
            # ...but set from a frame on another site it is refused.
            page.goto(f"http://localhost:{self.port}/top")
            frame = page.frame_locator("iframe[name=probe]")
            expect(frame.locator("body")).to_have_text("cookie:none")
            assert context.cookies(f"http://127.0.0.1:{self.port}") == []
        finally:
            page.close()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    yield from running_demo(tmp_path_factory.mktemp("demo-storage"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def probe() -> Iterator[CookieProbe]:
    server = CookieProbe()
    yield server
    server.stop()


@pytest.fixture
def context(browser: Browser, probe: CookieProbe) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(15_000)
    probe.assert_blocked(ctx)  # every test starts in a browser that refuses them
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


# -- helpers ------------------------------------------------------------------------------


class LaunchPosts:
    """The form posts to /lti/launch and /lti/launch/continue in every page of the context."""

    def __init__(self, context: BrowserContext) -> None:
        self.posts: list[tuple[str, dict[str, str]]] = []
        context.on("request", self._on_request)

    def _on_request(self, request: Request) -> None:
        path = urlsplit(request.url).path
        if request.method == "POST" and path.startswith("/lti/launch"):
            fields = {k: v[0] for k, v in parse_qs(request.post_data or "").items()}
            self.posts.append((path, fields))


def no_lifeline_cookie(context: BrowserContext, demo: DemoServer) -> None:
    """The browser holds no cookie of Lifeline's: nothing can have bound the launch but
    platform storage."""
    assert context.cookies(demo.base) == [], context.cookies(demo.base)


def ask_for_a_tutor(tool: FrameLocator | Page) -> None:
    """From the learner's landing: "Get a tutor", the form, then cancel (the course's queue
    is shared by every test of this module, and a learner has one open request at most)."""
    tool.get_by_test_id("learner-home").get_by_test_id("get-tutor").click()
    expect(tool.get_by_test_id("help-form-page")).to_be_visible()
    tool.get_by_test_id("help-question").fill(QUESTION)
    tool.get_by_test_id("help-submit").click()
    expect(tool.get_by_test_id("my-question")).to_have_text(QUESTION)
    expect(tool.get_by_test_id("queue-position")).to_be_visible()
    tool.get_by_test_id("cancel-request").click()  # one more form without a session cookie
    expect(tool.get_by_test_id("ask-again")).to_be_visible()


# -- tests --------------------------------------------------------------------------------


def test_a_learner_launches_through_platform_storage_and_gets_a_tutor(
    demo: DemoServer, context: BrowserContext, page: Page, shots: Path
) -> None:
    posts = LaunchPosts(context)
    traffic = Traffic()
    traffic.attach(page)
    tool = open_tool_as(page, demo.cross_site_base, "learner")
    expect(page.get_by_test_id("demo-lms-origin")).to_have_text(demo.cross_site_base)
    expect(page.get_by_test_id("demo-storage-state")).to_have_text("on")
    home = tool.get_by_test_id("learner-home")
    expect(home.get_by_test_id("person-name")).to_have_text(USERS["learner"].name)
    expect(home.get_by_test_id("exercise-title")).to_have_text(EXERCISES["ex1"])
    page.screenshot(path=str(shots / "storage-learner-landing.png"))

    # The login page stored state and nonce; the launch came without the state cookie, so
    # the storage page read them back from the LMS page and posted its proof.
    traffic.assert_in_order(
        ("GET", "/demo/start"),
        ("POST", "/lti/login"),
        ("GET", "/demo/auth"),
        ("POST", "/lti/launch"),
        ("POST", "/lti/launch"),
    )
    assert traffic.statuses[("POST", "/lti/login")] == 200  # the storage page, not a 302
    (_, first), (_, proof) = [p for p in posts.posts if p[0] == "/lti/launch"]
    assert "lti_storage_check" not in first
    state = first["state"]
    assert proof["state"] == proof["lti_storage_state"] == state
    assert len(proof["lti_storage_check"]) >= 40
    # The LMS page's storage frame holds exactly what the login put there.
    storage = page.frame(name=STORAGE_FRAME)
    assert storage is not None
    kept = storage.evaluate("Object.fromEntries(store)")
    assert kept["lti_state_" + state] == state
    assert kept["lti_nonce_" + proof["lti_storage_nonce"]] == proof["lti_storage_nonce"]
    no_lifeline_cookie(context, demo)

    ask_for_a_tutor(tool)
    page.screenshot(path=str(shots / "storage-learner-asked.png"))
    no_lifeline_cookie(context, demo)


def test_without_platform_storage_the_learner_continues_in_a_new_window(
    demo: DemoServer, context: BrowserContext, page: Page, shots: Path
) -> None:
    posts = LaunchPosts(context)
    traffic = Traffic()
    traffic.attach(page)
    tool = open_tool_as(page, demo.cross_site_base, "learner", storage=False)
    expect(page.get_by_test_id("demo-storage-state")).to_have_text("off")
    error = tool.get_by_test_id("error")
    expect(error).to_have_attribute("data-error", "state_not_bound")
    expect(tool.get_by_test_id("error-hint")).to_contain_text("third-party cookies")
    assert traffic.statuses[("POST", "/lti/login")] == 302  # no storage offered: plain OIDC
    assert traffic.statuses[("POST", "/lti/launch")] == 401
    assert [path for path, _ in posts.posts] == ["/lti/launch"]
    no_lifeline_cookie(context, demo)
    page.screenshot(path=str(shots / "storage-new-window-offer.png"))

    with context.expect_page() as opened:
        tool.get_by_test_id("open-new-window").click()
    window = opened.value
    expect(tool.get_by_test_id("new-window-opened")).to_be_visible()
    home = window.get_by_test_id("learner-home")
    expect(home.get_by_test_id("person-name")).to_have_text(USERS["learner"].name)
    assert urlsplit(window.url)[:3] == ("http", urlsplit(demo.base).netloc, "/lti/launch/continue")
    assert [path for path, _ in posts.posts] == ["/lti/launch", "/lti/launch/continue"]
    # A window of its own is first-party: the session cookie works there.
    cookies = {c["name"]: c for c in context.cookies(demo.base)}
    assert "lifeline_session" in cookies, cookies
    window.screenshot(path=str(shots / "storage-new-window.png"))
    ask_for_a_tutor(window)
    window.close()


def test_a_platform_that_offers_storage_but_never_answers_falls_back_to_a_new_window(
    demo: DemoServer, context: BrowserContext, page: Page
) -> None:
    """The LMS names a storage frame that does not answer: the login waits, says so, goes on
    with the cookie (refused here); the launch page cannot read the state back either, and
    offers the new window."""

    def silent_storage(route: Route) -> None:
        route.fulfill(status=200, content_type="text/html", body="<!doctype html><p>silent</p>")

    page.route("**/demo/storage", silent_storage)
    posts = LaunchPosts(context)
    tool = open_tool_as(page, demo.cross_site_base, "learner")
    expect(page.get_by_test_id("demo-storage-state")).to_have_text("on")
    expect(tool.get_by_test_id("storage-fallback")).to_contain_text("Continuing with a cookie")
    failed = tool.get_by_test_id("storage-failed")
    expect(failed).to_be_visible(timeout=20_000)
    expect(tool.get_by_test_id("storage-status")).to_contain_text("no answer to lti.get_data")
    assert [path for path, _ in posts.posts] == ["/lti/launch"]  # no proof was posted
    no_lifeline_cookie(context, demo)
    with context.expect_page() as opened:
        failed.get_by_test_id("open-new-window").click()
    window = opened.value
    expect(window.get_by_test_id("learner-home")).to_be_visible()
    window.close()


def test_on_the_same_site_the_cookie_binds_the_launch_and_storage_is_not_read(
    demo: DemoServer, context: BrowserContext, page: Page
) -> None:
    """The control: with the LMS on Lifeline's own site the cookie comes back, so the launch
    needs one post, and the storage page is never shown."""
    posts = LaunchPosts(context)
    tool = open_tool_as(page, demo.base, "learner")
    expect(tool.get_by_test_id("learner-home")).to_be_visible()
    assert [path for path, _ in posts.posts] == ["/lti/launch"]
    ((_, only),) = posts.posts
    assert "lti_storage_check" not in only
    # The login still put state and nonce into the LMS's storage, just in case.
    storage = page.frame(name=STORAGE_FRAME)
    assert storage is not None
    assert "lti_state_" + only["state"] in storage.evaluate("[...store.keys()]")
    cookies = {c["name"] for c in context.cookies(demo.base)}
    assert "lifeline_session" in cookies, cookies


def test_the_storage_frame_answers_only_lifelines_origin(
    demo: DemoServer, context: BrowserContext, page: Page
) -> None:
    """Another site cannot read what Lifeline stored: the demo LMS's storage frame ignores
    messages from any origin but Lifeline's."""
    open_tool_as(page, demo.cross_site_base, "learner")
    storage = page.frame(name=STORAGE_FRAME)
    assert storage is not None
    expect(page.frame_locator("iframe[name=tool]").get_by_test_id("learner-home")).to_be_visible()
    kept = storage.evaluate("Object.keys(Object.fromEntries(store))")
    assert kept, "the launch stored nothing"
    # The course page itself (localhost, not Lifeline's origin) asks the storage frame.
    answered = page.evaluate(
        """([name, key]) => new Promise((resolve) => {
            const target = window.frames[name];
            window.addEventListener("message", (e) => {
              if (e.data && e.data.message_id === "probe-1") resolve(e.data);
            });
            target.postMessage({subject: "lti.get_data", key, message_id: "probe-1"}, "*");
            setTimeout(() => resolve(null), 1500);
        })""",
        [STORAGE_FRAME, kept[0]],
    )
    assert answered is None
