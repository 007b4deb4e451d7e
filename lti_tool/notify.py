"""Outbound notifications: a chat webhook (Slack, Microsoft Teams), email over SMTP, and the
console stand-in the demo uses when no SMTP server is configured.

Every notifier has one method, ``send(target, message)``, which either delivers or raises
``NotifyError``. Every outbound call has a timeout. Secrets never reach a log line or an error
message: a webhook URL carries its secret in the path (Slack ``/services/T../B../xxx``, Teams
``/webhookb2/...``), so only its host and a short fingerprint are shown; SMTP passwords are
never formatted at all.
"""

from __future__ import annotations

import hashlib
import logging
import smtplib
import ssl
import sys
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Protocol, TextIO
from urllib.parse import unquote, urlsplit

import requests

from .config import Settings

log = logging.getLogger(__name__)

EMAIL = "email"
WEBHOOK = "webhook"


class NotifyError(Exception):
    """A notification was not delivered. The message is safe to store and show: no secrets."""


@dataclass(frozen=True)
class Message:
    subject: str
    text: str  # plain text: the email body, and the webhook's message


class Notifier(Protocol):
    channel: str
    # False for stand-ins that only write the message to the log (the page log says "logged").
    delivers: bool

    def send(self, target: str, message: Message) -> None: ...


# -- webhook -------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """What an admin may see of a webhook URL: its host and a fingerprint, never the path."""
    parts = urlsplit(url)
    fingerprint = hashlib.sha256(url.encode()).hexdigest()[:12]
    return f"{parts.hostname or '?'}#{fingerprint}"


def _scrub(text: str, url: str) -> str:
    parts = urlsplit(url)
    for part in (url, parts.path, parts.query):
        if part and part != "/":
            text = text.replace(part, "/…")
    return text


def slack_escape(text: str) -> str:
    """Slack treats &, < and > as markup; Teams shows the escaped entities as the characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class WebhookNotifier:
    """POST ``{"text": ...}``: the shape Slack incoming webhooks and Microsoft Teams (legacy
    Office 365 connector) incoming webhooks both accept. Redirects are not followed."""

    channel = WEBHOOK
    delivers = True

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def send(self, target: str, message: Message) -> None:
        where = redact_url(target)
        try:
            response = requests.post(
                target,
                json={"text": slack_escape(message.text)},
                timeout=(self.timeout, self.timeout),
                allow_redirects=False,
                headers={"User-Agent": "Lifeline notifier"},
            )
        except requests.RequestException as exc:
            raise NotifyError(
                f"webhook {where}: {type(exc).__name__}: {_scrub(str(exc), target)[:300]}"
            ) from None
        if not 200 <= response.status_code < 300:
            body = _scrub(response.text[:200], target).strip()
            raise NotifyError(f"webhook {where}: HTTP {response.status_code} {body}".rstrip())


# -- email ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    implicit_tls: bool  # smtps://
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def loopback(self) -> bool:
        return self.host in {"127.0.0.1", "localhost", "::1"}


def parse_smtp_url(url: str) -> SmtpConfig:
    """``smtp://user:pass@host:587`` (STARTTLS when offered) or ``smtps://user:pass@host:465``.

    Errors name the problem but never echo the URL, which may hold a password.
    """
    parts = urlsplit(url)
    if parts.scheme not in {"smtp", "smtps"}:
        raise ValueError("must start with smtp:// or smtps://")
    if not parts.hostname:
        raise ValueError("has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has a port that is not a number") from None
    implicit_tls = parts.scheme == "smtps"
    return SmtpConfig(
        host=parts.hostname,
        port=port or (465 if implicit_tls else 587),
        implicit_tls=implicit_tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def build_email(sender: str, to: str, message: Message) -> EmailMessage:
    email = EmailMessage()
    email["From"] = sender
    email["To"] = to
    email["Subject"] = _one_line(message.subject)[:200]
    email["Date"] = formatdate(localtime=False)
    email["Message-ID"] = make_msgid(domain=sender.rsplit("@", 1)[-1].strip("> ") or None)
    email.set_content(message.text)
    return email


class SmtpMailer:
    """Email over SMTP. Credentials go only over TLS (implicit, or STARTTLS when the server
    offers it); a plain connection with credentials is refused except to a loopback relay."""

    channel = EMAIL
    delivers = True

    def __init__(self, config: SmtpConfig, sender: str, timeout: float) -> None:
        self.config = config
        self.sender = sender
        self.timeout = timeout

    def send(self, target: str, message: Message) -> None:
        config = self.config
        where = f"smtp {config.host}:{config.port}"
        email = build_email(self.sender, target, message)
        context = ssl.create_default_context()
        try:
            client: smtplib.SMTP
            if config.implicit_tls:
                client = smtplib.SMTP_SSL(
                    config.host, config.port, timeout=self.timeout, context=context
                )
            else:
                client = smtplib.SMTP(config.host, config.port, timeout=self.timeout)
            with client:
                client.ehlo()
                secure = config.implicit_tls
                if not secure and client.has_extn("starttls"):
                    client.starttls(context=context)
                    client.ehlo()
                    secure = True
                if config.username:
                    if not secure and not config.loopback:
                        raise NotifyError(
                            f"{where}: the server offers no TLS; refusing to send the password "
                            "in clear (use smtps:// or a server with STARTTLS)"
                        )
                    client.login(config.username, config.password or "")
                client.send_message(email)
        except NotifyError:
            raise
        except (smtplib.SMTPException, OSError) as exc:
            detail = str(exc)
            if config.password:
                detail = detail.replace(config.password, "…")
            raise NotifyError(f"{where}: {type(exc).__name__}: {detail[:300]}") from None


class ConsoleMailer:
    """The demo's stand-in for SMTP: the email is written to the console, not sent."""

    channel = EMAIL
    delivers = False

    def __init__(self, sender: str, stream: TextIO | None = None) -> None:
        self.sender = sender
        self.stream = stream

    def send(self, target: str, message: Message) -> None:
        stream = self.stream or sys.stderr
        log.info("email (not sent: no LIFELINE_SMTP_URL) to %s: %s", target, message.subject)
        print(
            f"\n--- email (LIFELINE_SMTP_URL is not set, so it is only shown here) ---\n"
            f"From: {self.sender}\nTo: {target}\nSubject: {_one_line(message.subject)}\n\n"
            f"{message.text}\n--- end of email ---",
            file=stream,
            flush=True,
        )


# -- the set a job uses -----------------------------------------------------------------------


@dataclass(frozen=True)
class Notifiers:
    webhook: Notifier
    email: Notifier

    def for_channel(self, channel: str) -> Notifier:
        if channel == WEBHOOK:
            return self.webhook
        if channel == EMAIL:
            return self.email
        raise ValueError(f"no notifier for channel {channel!r}")


def notifiers_from_settings(settings: Settings) -> Notifiers:
    sender = settings.mail_sender
    email: Notifier
    if settings.smtp_url:
        email = SmtpMailer(parse_smtp_url(settings.smtp_url), sender, settings.http_timeout)
    else:
        email = ConsoleMailer(sender)
    return Notifiers(webhook=WebhookNotifier(settings.http_timeout), email=email)
