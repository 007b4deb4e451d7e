"""Names and Role Provisioning Services 2.0: reading a course's roster from the LMS.

The launch claim ``namesroleservice`` names the course's ``context_memberships_url``. A GET
with the membership container media type returns members page by page: Lifeline asks for
``limit`` members per page and follows ``Link: <...>; rel="next"`` until there is none. A page
may also carry ``rel="differences"``: a URL that later returns only the members who changed
since this sync (new, changed, and ``Inactive`` / ``Deleted`` ones), which keeps a scheduled
sync of a large course cheap.

This module only speaks the protocol and returns plain values; ``lms/roster.py`` decides what
a membership means for Lifeline. A roster is returned only when *every* page arrived, so a
sync that failed half way can never be mistaken for a course that lost half its members.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from .service_token import ServiceClient, ServiceError, check_service_url, redact, same_origin
from .tool_config import SCOPE_NRPS

CLAIM = "https://purl.imsglobal.org/spec/lti-nrps/claim/namesroleservice"
MEDIA_TYPE = "application/vnd.ims.lti-nrps.v2.membershipcontainer+json"
MAX_PAGES = 2000
MAX_MEMBERS = 200_000
ACTIVE, INACTIVE, DELETED = "Active", "Inactive", "Deleted"
_STATUSES = {s.lower(): s for s in (ACTIVE, INACTIVE, DELETED)}
_LINK = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]*)*)")
_REL = re.compile(r"""rel\s*=\s*(?:"([^"]*)"|([^\s;,"]+))""", re.IGNORECASE)


@dataclass(frozen=True)
class Member:
    """One membership as the LMS reports it (strings bounded, NUL-free)."""

    user_id: str
    roles: tuple[str, ...]
    status: str  # Active, Inactive or Deleted
    name: str = ""
    given_name: str = ""
    family_name: str = ""
    email: str = ""

    @property
    def display_name(self) -> str:
        return self.name or " ".join(filter(None, [self.given_name, self.family_name]))


@dataclass
class Roster:
    """Every member the sync received, in order (a member listed twice: the last one wins)."""

    members: list[Member] = field(default_factory=list)
    differences_url: str | None = None
    pages: int = 0
    skipped: int = 0  # entries without a usable user_id
    is_differences: bool = False


def service_url(claims: Mapping[str, Any]) -> str | None:
    """The course's ``context_memberships_url`` from a launch, if it offers NRPS 2.0."""
    claim = claims.get(CLAIM)
    if not isinstance(claim, dict):
        return None
    versions = claim.get("service_versions")
    if isinstance(versions, list) and versions and "2.0" not in versions:
        return None
    try:
        return check_service_url(claim.get("context_memberships_url"), "membership service")
    except ServiceError:
        return None


def parse_links(header: str | None) -> dict[str, str]:
    """``Link`` header values by relation (``next``, ``differences``)."""
    links: dict[str, str] = {}
    for match in _LINK.finditer(header or ""):
        url, params = match.group(1).strip(), match.group(2)
        for rel in _REL.finditer(params):
            for name in (rel.group(1) or rel.group(2) or "").split():
                links.setdefault(name.lower(), url)
    return links


def with_limit(url: str, limit: int) -> str:
    """``url`` asking for ``limit`` members per page (unless it asks for a limit already)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "limit" for k, _ in query):
        return url
    return urlunsplit(parts._replace(query=urlencode([*query, ("limit", str(limit))])))


def _storable(value: Any) -> bool:
    """Text PostgreSQL can hold: no NUL, and no unpaired surrogate (JSON may escape one,
    ``"\\ud800"``, and it cannot be encoded as UTF-8)."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(value: Any, limit: int = 500) -> str:
    if not _storable(value):
        return ""
    return str(value).strip()[:limit]


def parse_member(entry: Any) -> Member | None:
    if not isinstance(entry, dict):
        return None
    user_id = entry.get("user_id")
    if not isinstance(user_id, str) or not user_id or len(user_id) > 255:
        return None
    if not _storable(user_id):
        return None
    raw_roles = entry.get("roles")
    roles = tuple(
        r
        for r in (raw_roles if isinstance(raw_roles, list) else [])
        if isinstance(r, str) and r and len(r) <= 300 and _storable(r)
    )[:50]
    status = _STATUSES.get(_text(entry.get("status"), 20).lower(), ACTIVE)
    email = _text(entry.get("email"), 320)
    return Member(
        user_id=user_id,
        roles=roles,
        status=status,
        name=_text(entry.get("name")),
        given_name=_text(entry.get("given_name")),
        family_name=_text(entry.get("family_name")),
        email=email if "@" in email else "",
    )


def fetch_roster(
    client: ServiceClient,
    url: str,
    *,
    limit: int,
    differences: bool = False,
    max_pages: int = MAX_PAGES,
) -> Roster:
    """Every page of the roster at ``url`` (the memberships URL, or a differences URL).

    Raises ``ServiceError`` if any page fails: nothing partial is ever returned."""
    check_service_url(url, "membership service")
    roster = Roster(is_differences=differences)
    seen: set[str] = set()
    next_url: str | None = with_limit(url, limit)
    while next_url is not None:
        if next_url in seen:
            raise ServiceError(f"The roster at {redact(url)} links back to a page it already sent.")
        if roster.pages >= max_pages:
            raise ServiceError(f"The roster at {redact(url)} has more than {max_pages} pages.")
        seen.add(next_url)
        reply = client.call("GET", next_url, [SCOPE_NRPS], accept=MEDIA_TYPE)
        if reply.status == 403:
            raise ServiceError(
                "The LMS refused to share this course's roster (403): Lifeline needs the "
                "Names and Role Provisioning scope (contextmembership.readonly).",
                status=403,
            )
        if reply.status != 200:
            raise ServiceError(
                f"The LMS answered {reply.status} for the roster page {redact(next_url)}.",
                status=reply.status,
                retryable=reply.status >= 500,
            )
        page = reply.json("roster page")
        members = page.get("members") if isinstance(page, dict) else None
        if not isinstance(members, list):
            raise ServiceError(f"The roster page {redact(next_url)} has no members list.")
        for entry in members:
            member = parse_member(entry)
            if member is None:
                roster.skipped += 1
            else:
                roster.members.append(member)
        if len(roster.members) > MAX_MEMBERS:
            raise ServiceError(f"The roster at {redact(url)} has over {MAX_MEMBERS} members.")
        roster.pages += 1
        # Relative links are resolved against the page that carried them.
        links: dict[str, str] = {}
        for rel, link in parse_links(reply.headers.get("Link")).items():
            try:
                links[rel] = urljoin(next_url, link)
            except ValueError:  # "http://[::1": not a URL at all
                if rel == "next":
                    raise ServiceError(
                        f"The roster's next page link on {redact(next_url)} is not a valid URL."
                    ) from None
        if "differences" in links:
            found = links["differences"]
            if _followable(found, url):
                roster.differences_url = found
        next_url = links.get("next")
        if next_url is not None and not _followable(next_url, url):
            raise ServiceError(
                f"The roster's next page {redact(next_url)} is not on the LMS's own host "
                f"({redact(url)}); Lifeline does not send the access token elsewhere."
            )
    return roster


def _followable(link: str, base: str) -> bool:
    try:
        check_service_url(link, "roster page")
    except ServiceError:
        return False
    return same_origin(link, base)
