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


@dataclass(frozen=True)
class ToolPlacement:
    """Where an LMS shows Lifeline. ``name`` is Canvas's placement name (Dynamic Registration
    uses the same names); ``where`` says in words where it appears, for the admin guides."""

    name: str
    message_type: str
    text: str
    where: str
    # Shown in every course at once, or only once a teacher turns it on (Canvas's
    # course navigation ``default: disabled``).
    enabled_by_default: bool = True


PLACEMENTS: tuple[ToolPlacement, ...] = (
    ToolPlacement(
        name="course_navigation",
        message_type=MESSAGE_RESOURCE_LINK,
        text=TOOL_NAME,
        where="the course menu (learners: 'Get a tutor'; tutors: the live queue)",
        enabled_by_default=False,
    ),
    ToolPlacement(
        name="link_selection",
        message_type=MESSAGE_DEEP_LINKING,
        text=f"{TOOL_NAME} help",
        where="'add an external tool' to a module or unit: places Lifeline on an exercise",
    ),
    ToolPlacement(
        name="assignment_selection",
        message_type=MESSAGE_DEEP_LINKING,
        text=f"{TOOL_NAME} help",
        where="an assignment's 'external tool' submission type: places Lifeline on it",
    ),
)
