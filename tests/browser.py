"""Helpers for browser tests: the real ``lifeline demo`` as a subprocess, and Chromium.

Playwright cannot download browsers here, so Chromium is Debian's, launched headless.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from playwright.sync_api import Browser, FrameLocator, Page, Playwright, Request, Response

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
LIFELINE = Path(sys.executable).with_name("lifeline")


def launch_chromium(playwright: Playwright, extra_args: Sequence[str] = ()) -> Browser:
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[*CHROMIUM_ARGS, *extra_args],
        headless=True,
        timeout=20_000,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class DemoServer:
    """``lifeline demo`` started exactly as a user would, in its own working directory."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # The same demo on the other loopback name: the demo LMS there is a different site
        # from Lifeline (which stays at ``base``), as a real LMS is (see demo_lms/platform.py).
        self.cross_site_base = f"http://localhost:{self.port}"
        self.log_path = workdir / "demo.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
        env["LIFELINE_INSTANCE_PATH"] = str(self.workdir / "instance")
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(LIFELINE), "demo", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"lifeline demo exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"lifeline demo did not answer /healthz in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class Traffic:
    """Every request the page (and its frames) made, with the status each got."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    statuses: dict[tuple[str, str], int] = field(default_factory=dict)

    def attach(self, page: Page) -> None:
        page.on("request", self._on_request)
        page.on("response", self._on_response)

    def _on_request(self, request: Request) -> None:
        self.requests.append((request.method, urlsplit(request.url).path))

    def _on_response(self, response: Response) -> None:
        self.statuses[(response.request.method, urlsplit(response.url).path)] = response.status

    def clear(self) -> None:
        self.requests.clear()
        self.statuses.clear()

    def assert_in_order(self, *expected: tuple[str, str]) -> None:
        """``expected`` appear in this order (other requests may come between them)."""
        position = 0
        for wanted in expected:
            try:
                position = self.requests.index(wanted, position) + 1
            except ValueError:
                raise AssertionError(
                    f"{wanted} not seen (in order) among the browser's requests: {self.requests}"
                ) from None


def open_tool_as(
    page: Page, base: str, user: str, exercise: str = "ex1", storage: bool = True
) -> FrameLocator:
    """Open the demo LMS as ``user`` and launch Lifeline on ``exercise``; the tool's frame.
    ``storage=False``: the LMS page offers no LTI Platform Storage."""
    page.goto(base + "/demo/" + ("" if storage else "?storage=0"))
    page.get_by_test_id("demo-user").select_option(user)
    page.get_by_test_id(f"launch-{exercise}").click()
    return page.frame_locator("iframe[name=tool]")


def running_demo(workdir: Path) -> Iterator[DemoServer]:
    """For a module-scoped fixture: ``lifeline demo`` running in ``workdir``."""
    server = DemoServer(workdir)
    server.start()
    yield server
    server.stop()
