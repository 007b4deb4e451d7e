"""The demo's administration in a real Chromium, with ``lifeline demo`` run as a user would.

- ``lifeline demo`` prints where everything is and an administrator's sign-in, which works at
  /admin (a demo user has no shell with production settings to run ``lifeline admin add``).
- The demo LMS installs Lifeline by LTI Dynamic Registration: its admin page opens Lifeline's
  ``/lti/register`` in a dialog with its configuration URL and a registration token, Lifeline
  registers itself, its "Return" button closes the dialog (``org.imsglobal.lti.close``), the
  registration waits for approval, launches through it are refused until an administrator
  approves it on /admin, and work afterwards.
"""

from __future__ import annotations

import html
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from lti_tool.demo_lms.platform import USERS
from lti_tool.demo_lms.startup import DEMO_ADMIN_EMAIL, PASSWORD_FILE
from tests.browser import DemoServer, launch_chromium, running_demo

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    yield from running_demo(tmp_path_factory.mktemp("demo-admin"))


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


def printed_admin(demo: DemoServer) -> tuple[str, str]:
    """The sign-in ``lifeline demo`` printed; it is also the one kept in the instance folder."""
    found = re.search(r"email (\S+)\s+password (\S+)", demo.log())
    assert found, demo.log()
    email, password = found.groups()
    kept = (demo.workdir / "instance" / PASSWORD_FILE).read_text().strip()
    assert password == kept
    return email, password


def log_in(page: Page, demo: DemoServer, password: str) -> None:
    page.goto(demo.base + "/admin/")
    expect(page.get_by_test_id("admin-login-email")).to_have_value(DEMO_ADMIN_EMAIL)
    page.get_by_test_id("admin-login-password").fill(password)
    page.get_by_test_id("admin-login-submit").click()
    expect(page.get_by_test_id("admin-platforms")).to_be_visible()


def test_the_demo_prints_where_everything_is_and_its_admin_signs_in(
    demo: DemoServer, context: BrowserContext, tmp_path: Path
) -> None:
    log = demo.log()
    for url in (
        f"{demo.base}/demo/",
        f"{demo.cross_site_base}/demo/",  # the course on another site than Lifeline
        f"{demo.base}/admin/",
        f"{demo.base}/demo/lms-admin/",
        f"{demo.base}/lti/register",
    ):
        assert url in log, (url, log)
    email, password = printed_admin(demo)
    assert email == DEMO_ADMIN_EMAIL

    page = context.new_page()
    page.goto(demo.base + "/demo/")
    admin_link = page.get_by_test_id("demo-lifeline-admin-link")
    assert admin_link.get_attribute("href") == demo.base + "/admin/"

    page.goto(demo.base + "/admin/")  # not signed in: the login page, which says how
    expect(page.get_by_test_id("admin-login")).to_be_visible()
    expect(page.get_by_test_id("admin-login-demo")).to_contain_text(DEMO_ADMIN_EMAIL)
    assert password not in page.content()  # the password is printed, never shown on a page
    page.get_by_test_id("admin-login-password").fill("not-the-password")
    with page.expect_response(lambda r: r.url.endswith("/admin/login")) as answer:
        page.get_by_test_id("admin-login-submit").click()
    assert answer.value.status == 401
    expect(page.get_by_test_id("admin-login-error")).to_contain_text("do not match")

    log_in(page, demo, password)
    expect(page.get_by_test_id("admin-email")).to_have_text(DEMO_ADMIN_EMAIL)
    expect(page.get_by_test_id("admin-register-url")).to_have_text(demo.base + "/lti/register")
    demo_lms = page.get_by_test_id("admin-platform").filter(has_text="lifeline-demo-client")
    expect(demo_lms.first).to_have_attribute("data-status", "active")
    page.screenshot(path=str(tmp_path / "admin.png"), full_page=True)


def test_the_demo_lms_registers_lifeline_which_launches_once_an_admin_approves_it(
    demo: DemoServer, context: BrowserContext
) -> None:
    lms = context.new_page()
    lms.goto(demo.base + "/demo/")
    lms.get_by_test_id("demo-lms-admin-link").click()
    expect(lms.get_by_test_id("lms-admin-title")).to_have_text("LTI tools")
    expect(lms.get_by_test_id("lms-register-url")).to_have_value(demo.base + "/lti/register")
    before = lms.get_by_test_id("lms-tool").count()

    # Lifeline's registration page, in the LMS's dialog, read the LMS's configuration.
    lms.get_by_test_id("lms-register-start").click()
    dialog = lms.frame_locator("iframe[name=registration]")
    expect(dialog.get_by_test_id("register-confirm")).to_be_visible()
    expect(dialog.get_by_test_id("register-product")).to_have_text("Demo LMS 1.0")
    expect(dialog.get_by_test_id("register-issuer")).to_have_text(demo.base + "/demo")
    expect(dialog.get_by_test_id("register-scope")).to_have_count(0)  # it offers no services
    expect(dialog.get_by_test_id("register-approval")).to_contain_text("must approve")

    dialog.get_by_test_id("register-submit").click()
    done = dialog.get_by_test_id("register-done")
    expect(done).to_have_attribute("data-status", "pending")
    expect(dialog.get_by_test_id("done-pending")).to_be_visible()
    client_id = dialog.get_by_test_id("done-client-id").inner_text()
    deployment_id = dialog.get_by_test_id("done-deployment").inner_text()
    assert client_id.startswith("demo-dynreg-") and deployment_id.startswith("demo-dynreg-")

    # "Return to Demo LMS" posts org.imsglobal.lti.close: the LMS closes the dialog.
    dialog.get_by_test_id("register-close").click()
    expect(lms.locator("iframe[name=registration]")).to_have_count(0)
    expect(lms.get_by_test_id("lms-tool")).to_have_count(before + 1)
    row = lms.locator(f"[data-testid=lms-tool][data-client-id='{client_id}']")
    expect(row.get_by_test_id("lms-tool-deployment-id")).to_have_text(deployment_id)

    # Launching through it is refused while it waits for approval...
    row.get_by_test_id("lms-tool-launch").click()
    expect(lms.get_by_test_id("demo-client")).to_have_value(client_id)
    lms.get_by_test_id("demo-user").select_option("learner")
    lms.get_by_test_id("launch-ex1").click()
    tool = lms.frame_locator("iframe[name=tool]")
    expect(tool.get_by_test_id("error")).to_have_attribute("data-status", "403")
    expect(tool.get_by_test_id("error-detail")).to_contain_text("pending")

    # ...an administrator approves it on Lifeline's admin page...
    _, password = printed_admin(demo)
    admin = context.new_page()
    log_in(admin, demo, password)
    platform = admin.get_by_test_id("admin-platform").filter(has_text=client_id)
    expect(platform).to_have_attribute("data-status", "pending")
    expect(platform.get_by_test_id("admin-platform-deployments")).to_contain_text(deployment_id)
    platform.get_by_test_id("admin-approve").click()
    expect(admin.get_by_test_id("admin-notice")).to_contain_text("Approved")
    expect(platform).to_have_attribute("data-status", "active")

    # ...and the same launch works.
    lms.get_by_test_id("launch-ex1").click()
    home = tool.get_by_test_id("learner-home")
    expect(home.get_by_test_id("person-name")).to_have_text(USERS["learner"].name)
    expect(platform.get_by_test_id("admin-platform-last-launch")).not_to_have_text("never")

    # The registration `lifeline demo` made still launches too.
    lms.get_by_test_id("demo-client").select_option("")
    lms.get_by_test_id("launch-ex2").click()
    expect(tool.get_by_test_id("learner-home")).to_be_visible()


def _http(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _start_registration(demo: DemoServer, tool_url: str) -> tuple[int, str]:
    form = urllib.parse.urlencode({"tool_url": tool_url}).encode()
    return _http(demo.base + "/demo/lms-admin/register", form)


def test_the_demo_lms_registration_endpoints_want_their_token_once(demo: DemoServer) -> None:
    status, page = _start_registration(demo, demo.base + "/lti/register")
    assert status == 200
    src = html.unescape(re.search(r'<iframe name="registration"[^>]* src="([^"]+)"', page)[1])
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(src).query)
    config_url, token = query["openid_configuration"][0], query["registration_token"][0]
    assert config_url == demo.base + "/demo/registration/configuration"

    # Like Canvas, the configuration is shown only with the token.
    assert _http(config_url)[0] == 401
    assert _http(config_url, headers={"Authorization": "Bearer wrong"})[0] == 401
    status, body = _http(config_url, headers={"Authorization": f"Bearer {token}"})
    assert status == 200
    config: dict[str, Any] = json.loads(body)
    assert config["issuer"] == demo.base + "/demo"
    register_url = config["registration_endpoint"]

    # A registration the LMS cannot use is refused, and uses up the token.
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    status, body = _http(register_url, b'{"client_name": "x"}', headers)
    assert status == 400 and json.loads(body)["error"] == "invalid_client_metadata"
    status, body = _http(register_url, b"{}", headers)
    assert status == 401 and json.loads(body)["error"] == "invalid_token"

    # The LMS frames only the Lifeline it runs with, and says so.
    status, page = _start_registration(demo, "https://elsewhere.example/lti/register")
    assert status == 400
    assert 'data-testid="lms-register-error"' in page
    assert "registration_token" not in page
