"""Receivers for outbound notifications, on 127.0.0.1, in threads: a minimal SMTP server that
records the emails it accepts, and an HTTP webhook receiver that records what is POSTed.

Both can be told to fail (an SMTP 451, an HTTP 500) or, for the webhook, to hold a request
open, so tests see what the notifier and the page log do on a failure or a hang.
"""

from __future__ import annotations

import base64
import json
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ReceivedEmail:
    mail_from: str
    rcpt_to: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        part = self.message.get_body(("plain",))
        return part.get_content() if part is not None else ""  # type: ignore[no-any-return]


@dataclass
class SmtpState:
    emails: list[ReceivedEmail] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    # A recipient for which the server answers 451 (temporary failure) to RCPT TO.
    fail_rcpt: set[str] = field(default_factory=set)
    credentials: tuple[str, str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class _SmtpHandler(socketserver.StreamRequestHandler):
    timeout = 10
    server: _SmtpServer

    def _reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        state = self.server.state
        self._reply("220 localhost test SMTP ready")
        mail_from, rcpt = "", []
        while True:
            raw = self.rfile.readline(4096)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                self._reply("250-localhost")
                if state.credentials:
                    self._reply("250-AUTH PLAIN")
                self._reply("250 8BITMIME")
            elif verb == "HELO":
                self._reply("250 localhost")
            elif verb == "AUTH":
                mechanism, _, initial = arg.partition(" ")
                if mechanism.upper() != "PLAIN" or not state.credentials:
                    self._reply("504 unsupported")
                    continue
                if not initial:
                    self._reply("334 ")
                    initial = self.rfile.readline(4096).decode().strip()
                _, user, password = base64.b64decode(initial).decode().split("\0")
                with state.lock:
                    state.logins.append((user, password))
                if (user, password) == state.credentials:
                    self._reply("235 authenticated")
                else:
                    self._reply("535 bad credentials")
            elif verb == "MAIL":
                if state.credentials and not state.logins:
                    self._reply("530 authentication required")
                    continue
                mail_from, rcpt = arg.split(":", 1)[1].strip().strip("<>"), []
                self._reply("250 ok")
            elif verb == "RCPT":
                address = arg.split(":", 1)[1].strip().strip("<>")
                if address in state.fail_rcpt:
                    self._reply("451 try again later")
                    continue
                rcpt.append(address)
                self._reply("250 ok")
            elif verb == "DATA":
                self._reply("354 end with <CRLF>.<CRLF>")
                lines = []
                while True:
                    data = self.rfile.readline(65536)
                    if not data or data == b".\r\n":
                        break
                    lines.append(data[1:] if data.startswith(b"..") else data)
                message = message_from_bytes(b"".join(lines), policy=policy.default)
                assert isinstance(message, EmailMessage)
                with state.lock:
                    state.emails.append(ReceivedEmail(mail_from, list(rcpt), message))
                self._reply("250 queued")
            elif verb in {"RSET", "NOOP"}:
                self._reply("250 ok")
            elif verb == "QUIT":
                self._reply("221 bye")
                return
            else:
                self._reply("502 not implemented")


class _SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: SmtpState) -> None:
        super().__init__(("127.0.0.1", 0), _SmtpHandler)
        self.state = state


@contextmanager
def smtp_server(credentials: tuple[str, str] | None = None) -> Iterator[tuple[int, SmtpState]]:
    """A running SMTP server: yields (port, state)."""
    state = SmtpState(credentials=credentials)
    server = _SmtpServer(state)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1], state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- webhook ---------------------------------------------------------------------------------


@dataclass
class WebhookState:
    posts: list[dict[str, Any]] = field(default_factory=list)
    # Statuses to answer with, in order; once used up, 200.
    statuses: list[int] = field(default_factory=list)
    # When set, the first POST is held (up to hold_seconds) until ``release`` is set.
    hold_first: bool = False
    hold_seconds: float = 60.0
    received: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _WebhookHandler(BaseHTTPRequestHandler):
    server: _WebhookServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        state = self.server.state
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with state.lock:
            state.posts.append({"path": self.path, "json": json.loads(body or b"null")})
            first = len(state.posts) == 1
            status = state.statuses.pop(0) if state.statuses else 200
        state.received.set()
        if first and state.hold_first:
            state.release.wait(state.hold_seconds)
        payload = b"ok" if status < 300 else b"internal_error"
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client went away (killed mid-request)


class _WebhookServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: WebhookState) -> None:
        super().__init__(("127.0.0.1", 0), _WebhookHandler)
        self.state = state


@contextmanager
def webhook_server(
    path: str = "/services/T000/B000/secret-token",
) -> Iterator[tuple[str, WebhookState]]:
    """A running webhook receiver: yields (url, state). The path looks like a Slack one."""
    state = WebhookState()
    server = _WebhookServer(state)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{path}", state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
