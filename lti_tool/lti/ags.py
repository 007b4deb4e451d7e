"""Assignment and Grade Services 2.0: one line item of Lifeline's own, and scores on it.

A launch's ``endpoint`` claim names the course's ``lineitems`` URL and the scopes the platform
granted. Lifeline keeps a single line item per course, found again by its ``tag`` (so a lost
URL never makes a second column in the gradebook), created when missing, and posts scores to
``<lineitem>/scores``. Only the protocol is here; ``lms/grades.py`` decides when and what.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

from .nrps import parse_links
from .service_token import ServiceClient, ServiceError, check_service_url, redact, same_origin
from .tool_config import SCOPE_AGS_LINEITEM, SCOPE_AGS_SCORE

CLAIM = "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint"
LINEITEM_MEDIA = "application/vnd.ims.lis.v2.lineitem+json"
LINEITEMS_MEDIA = "application/vnd.ims.lis.v2.lineitemcontainer+json"
SCORE_MEDIA = "application/vnd.ims.lis.v1.score+json"
SCOPES = (SCOPE_AGS_LINEITEM, SCOPE_AGS_SCORE)  # one token (and one cache entry) for both
MAX_LINEITEM_PAGES = 20


@dataclass(frozen=True)
class Endpoint:
    lineitems: str
    scopes: tuple[str, ...]

    @property
    def can_report(self) -> bool:
        """Whether the platform granted what a participation column needs."""
        return SCOPE_AGS_LINEITEM in self.scopes and SCOPE_AGS_SCORE in self.scopes


def endpoint(claims: Mapping[str, Any]) -> Endpoint | None:
    """The course's line items URL and granted scopes from a launch, if it offers AGS."""
    claim = claims.get(CLAIM)
    if not isinstance(claim, dict):
        return None
    try:
        lineitems = check_service_url(claim.get("lineitems"), "line items")
    except ServiceError:
        return None
    raw = claim.get("scope")
    scopes = tuple(
        sorted({s for s in (raw if isinstance(raw, list) else []) if isinstance(s, str)})
    )
    return Endpoint(lineitems, tuple(s for s in scopes if len(s) <= 200)[:20])


@dataclass(frozen=True)
class LineItemSpec:
    label: str
    score_maximum: float
    tag: str
    resource_id: str


@dataclass(frozen=True)
class Score:
    user_id: str
    score_given: float
    score_maximum: float
    timestamp: dt.datetime
    comment: str = ""

    def as_json(self) -> dict[str, Any]:
        """The score document. ``timestamp`` is ISO 8601 with milliseconds: platforms ignore
        a score whose timestamp is not later than the one they hold."""
        document: dict[str, Any] = {
            "userId": self.user_id,
            "scoreGiven": self.score_given,
            "scoreMaximum": self.score_maximum,
            "activityProgress": "Completed",
            "gradingProgress": "FullyGraded",
            "timestamp": self.timestamp.astimezone(dt.UTC).isoformat(timespec="milliseconds"),
        }
        if self.comment:
            document["comment"] = self.comment
        return document


def _error(reply_status: int, what: str, url: str) -> ServiceError:
    hint = ""
    if reply_status == 403:
        hint = " Lifeline needs the Assignment and Grade Services scopes (lineitem and score)."
    return ServiceError(
        f"The LMS answered {reply_status} when Lifeline {what} at {redact(url)}.{hint}",
        status=reply_status,
        retryable=reply_status >= 500 or reply_status == 429,
    )


def find_line_item(client: ServiceClient, lineitems_url: str, spec: LineItemSpec) -> str | None:
    """The URL of the course's line item tagged ``spec.tag`` (with our resource id), if any."""
    parts = urlsplit(lineitems_url)
    query = "&".join(filter(None, [parts.query, urlencode({"tag": spec.tag})]))
    next_url: str | None = urlunsplit(parts._replace(query=query))
    for _ in range(MAX_LINEITEM_PAGES):
        if next_url is None:
            return None
        reply = client.call("GET", next_url, SCOPES, accept=LINEITEMS_MEDIA)
        if reply.status != 200:
            raise _error(reply.status, "looked for its line item", next_url)
        items = reply.json("line items")
        if not isinstance(items, list):
            raise ServiceError(f"The line items at {redact(next_url)} are not a list.")
        for item in items:
            if (
                isinstance(item, dict)
                and item.get("tag") == spec.tag
                and item.get("resourceId", spec.resource_id) == spec.resource_id
                and isinstance(item.get("id"), str)
            ):
                return _lineitem_url(item["id"], lineitems_url)
        link = parse_links(reply.headers.get("Link")).get("next")
        try:
            next_url = urljoin(next_url, link) if link else None
        except ValueError:  # not a URL at all: there is no next page to read
            return None
        if next_url is not None and not same_origin(next_url, lineitems_url):
            return None
    return None


def create_line_item(client: ServiceClient, lineitems_url: str, spec: LineItemSpec) -> str:
    """POST a new line item; returns its URL. Not retried on a timeout (it may exist then:
    the next run finds it by its tag)."""
    reply = client.call(
        "POST",
        lineitems_url,
        SCOPES,
        accept=LINEITEM_MEDIA,
        body={
            "label": spec.label,
            "scoreMaximum": spec.score_maximum,
            "tag": spec.tag,
            "resourceId": spec.resource_id,
        },
        content_type=LINEITEM_MEDIA,
        idempotent=False,
    )
    if reply.status not in (200, 201):
        raise _error(reply.status, "created its line item", lineitems_url)
    item = reply.json("new line item")
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        raise ServiceError(f"The LMS created a line item at {redact(lineitems_url)} without an id.")
    return _lineitem_url(item["id"], lineitems_url)


def _lineitem_url(item_id: str, lineitems_url: str) -> str:
    try:
        joined = urljoin(lineitems_url, item_id)
    except ValueError:  # "http://[::1": not a URL at all
        raise ServiceError(f"The LMS's line item id {item_id[:200]!r} is not a URL.") from None
    url = check_service_url(joined, "line item")
    if not same_origin(url, lineitems_url):
        raise ServiceError(
            f"The line item {redact(url)} is not on the LMS's own host ({redact(lineitems_url)})."
        )
    return url


def scores_url(lineitem_url: str) -> str:
    """``<lineitem>/scores``, keeping the line item's query (Moodle's ``?type_id=``)."""
    parts = urlsplit(lineitem_url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/scores"))


def post_score(client: ServiceClient, lineitem_url: str, score: Score) -> None:
    """POST one score. A score replaces the learner's previous one, so sending it again (a
    retry after a timeout) changes nothing."""
    url = scores_url(lineitem_url)
    reply = client.call(
        "POST",
        url,
        SCOPES,
        accept="application/json",
        body=score.as_json(),
        content_type=SCORE_MEDIA,
        idempotent=True,
    )
    if reply.status not in (200, 201, 202, 204):
        raise _error(reply.status, "posted a score", url)
