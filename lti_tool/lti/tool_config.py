"""What Lifeline tells an LMS about itself: one description for every way of installing it.

LTI Dynamic Registration (``/lti/register``), ``lifeline platform config <lms>`` and the admin
guides in ``docs/platforms/`` all read the URLs, scopes, messages, claims and custom parameters
from here, so an LMS configured by hand and one registered dynamically ask for the same things.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

TOOL_NAME = "Lifeline"
TOOL_DESCRIPTION = (
    "Live 1-to-1 tutor help inside your course: learners ask for a tutor, or are offered one "
    "when Lifeline notices they are stuck on an exercise."
)

# OAuth 2 scopes of the LTI Advantage services Lifeline uses.
SCOPE_NRPS = "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly"
SCOPE_AGS_LINEITEM = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem"
SCOPE_AGS_RESULT = "https://purl.imsglobal.org/spec/lti-ags/scope/result.readonly"
SCOPE_AGS_SCORE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
SCOPES: tuple[str, ...] = (SCOPE_NRPS, SCOPE_AGS_LINEITEM, SCOPE_AGS_RESULT, SCOPE_AGS_SCORE)

# The id_token claims Lifeline reads (OpenID names, as Dynamic Registration lists them).
CLAIMS: tuple[str, ...] = (
    "iss",
    "sub",
    "name",
    "given_name",
    "family_name",
    "email",
)

MESSAGE_RESOURCE_LINK = "LtiResourceLinkRequest"
MESSAGE_DEEP_LINKING = "LtiDeepLinkingRequest"

# Custom parameters with LTI / LMS substitution variables. Each is optional: an LMS that does
# not know a variable sends it back literally ("$Canvas.course.id"), and Lifeline treats such
# a value as absent (see ``lti/custom.py``).
CUSTOM_PARAMETERS: dict[str, str] = {
    "context_id_history": "$Context.id.history",
    "person_timezone": "$Person.address.timezone",
}
CANVAS_CUSTOM_PARAMETERS: dict[str, str] = {
    **CUSTOM_PARAMETERS,
    "canvas_course_id": "$Canvas.course.id",
    "canvas_user_id": "$Canvas.user.id",
}


@dataclass(frozen=True)
class ToolUrls:
    """Lifeline's public endpoints for one installation, from its ``BASE_URL``."""

    base_url: str

    @property
    def login(self) -> str:
        """OIDC third-party initiated login (the LMS calls it: "OpenID Connect Initiation URL")."""
        return self.base_url + "/lti/login"

    @property
    def launch(self) -> str:
        """Target link URI and the only redirect URI: resource link and deep linking launches."""
        return self.base_url + "/lti/launch"

    @property
    def jwks(self) -> str:
        """The tool's public keys (used by the LMS to check deep linking responses and the
        client assertions of service calls)."""
        return self.base_url + "/lti/jwks"

    @property
    def register(self) -> str:
        """LTI Dynamic Registration initiation URL."""
        return self.base_url + "/lti/register"

    @property
    def icon(self) -> str:
        return self.base_url + "/static/icon.svg"

    @property
    def domain(self) -> str:
        return urlsplit(self.base_url).netloc

    @property
    def redirect_uris(self) -> tuple[str, ...]:
        return (self.launch,)
