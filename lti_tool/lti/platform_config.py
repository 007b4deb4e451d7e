"""What an LMS admin pastes into each LMS to install Lifeline by hand.

``lifeline platform config <lms>`` prints it. Every value comes from ``tool_config`` (URLs,
scopes, custom parameters, placements), so a hand-made installation asks for what Dynamic
Registration would. Field names are the ones each LMS shows on its forms; where an LMS is known
to vary between releases, the note says so (``docs/platforms/<lms>.md`` walks through the
same steps in more words).

Each configuration ends with the ``lifeline platform add`` command the admin runs afterwards.
Values only the LMS knows appear in it as placeholders such as ``<CLIENT_ID>``: a name ending
in ``_URL`` stands for an absolute URL without a trailing slash, one ending in ``_HOST`` for a
host name, anything else for an opaque value copied as shown.
"""

# "token_url" and "token_audience" name OAuth endpoints of LMSs, not secrets:
# ruff: noqa: S106

from __future__ import annotations

import json
import shlex
import textwrap
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from . import tool_config as tc
from .registry import LOOPBACK_HOSTS

LMS_NAMES: tuple[str, ...] = (
    "canvas",
    "moodle",
    "brightspace",
    "blackboard",
    "openedx",
    "sakai",
    "schoology",
)


class BaseUrlError(ValueError):
    """Lifeline's base URL cannot be given to an LMS; the message says why."""


def check_base_url(value: str) -> tc.ToolUrls:
    """Lifeline's public address as an LMS must reach it: https (plain http only on a
    loopback host, for trying things out), no query or fragment, no trailing slash."""
    value = value.strip()
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
    except ValueError:
        raise BaseUrlError(
            f"{value!r} is not a valid URL (check the host and the port); give Lifeline's "
            "public address, such as https://lifeline.example.edu."
        ) from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise BaseUrlError(
            f"{value!r} is not an absolute URL; give Lifeline's public address, such as "
            "https://lifeline.example.edu."
        )
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise BaseUrlError(
            f"{value!r} uses plain http: an LMS only launches tools over https (and browsers "
            "drop the cookies of an http page inside an https LMS). Use Lifeline's https "
            "address; plain http is accepted only on localhost, for trying things out."
        )
    if parts.query or parts.fragment:
        raise BaseUrlError(f"{value!r} must not carry a query (?) or fragment (#).")
    return tc.ToolUrls(value.rstrip("/"))


# -- the shape of a configuration -------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One form field, labelled as the LMS labels it."""

    label: str
    value: str


@dataclass(frozen=True)
class Section:
    """One page or part of a form in the LMS, in the order the admin meets them."""

    title: str
    fields: tuple[Field, ...] = ()
    notes: tuple[str, ...] = ()
    # A block pasted as a whole (the Canvas developer key JSON), printed after the fields.
    block: str = ""


@dataclass(frozen=True)
class Placeholder:
    """A value only the LMS knows, written ``<NAME>`` in the ``platform add`` command."""

    name: str
    where: str

    @property
    def token(self) -> str:
        return f"<{self.name}>"


@dataclass(frozen=True)
class AddCommand:
    """The ``lifeline platform add`` the admin runs once the LMS shows its values."""

    name: str
    issuer: str
    client_id: str
    auth_url: str
    token_url: str
    keyset_url: str
    deployment_id: str
    token_audience: str | None = None

    def argv(self) -> list[str]:
        args = [
            "lifeline",
            "platform",
            "add",
            "--name",
            self.name,
            "--issuer",
            self.issuer,
            "--client-id",
            self.client_id,
            "--auth-url",
            self.auth_url,
            "--token-url",
            self.token_url,
            "--keyset-url",
            self.keyset_url,
            "--deployment-id",
            self.deployment_id,
        ]
        if self.token_audience:
            args += ["--token-audience", self.token_audience]
        return args

    def shell(self) -> str:
        """The command for a POSIX shell, one option a line."""
        args = self.argv()
        lines = [" ".join(args[:3])]
        lines += [
            f"  {flag} {shlex.quote(value)}"
            for flag, value in zip(args[3::2], args[4::2], strict=True)
        ]
        return " \\\n".join(lines)


@dataclass(frozen=True)
class PlatformConfig:
    lms: str
    title: str
    urls: tc.ToolUrls
    # How to use Dynamic Registration instead, or why not: one paragraph.
    dynamic_registration: str
    supports_dynamic_registration: bool
    sections: tuple[Section, ...]
    # Where each placeholder of the command is found in the LMS.
    placeholders: tuple[Placeholder, ...]
    add: AddCommand
    notes: tuple[str, ...] = ()
    # What `--format json` prints instead of the generic document (Canvas: the key alone).
    pasteable: dict[str, Any] | None = field(default=None, compare=False)

    def text(self) -> str:
        out = [
            f"Installing Lifeline in {self.title} (LTI 1.3) for {self.urls.base_url}",
            "",
            "Lifeline's addresses:",
            *_render_fields(
                (
                    Field("OIDC login initiation", self.urls.login),
                    Field("Target link / redirect URI", self.urls.launch),
                    Field("Public keyset (JWKS)", self.urls.jwks),
                    Field("Dynamic Registration URL", self.urls.register),
                    Field("Icon", self.urls.icon),
                )
            ),
            "",
            _wrap("Dynamic Registration: " + self.dynamic_registration),
            "",
            "By hand:" if self.supports_dynamic_registration else "Steps:",
        ]
        for number, section in enumerate(self.sections, 1):
            out += ["", f"{number}. {section.title}"]
            out += _render_fields(section.fields)
            if section.block:
                out += ["", *(f"     {line}" for line in section.block.splitlines()), ""]
            out += [_wrap(note, "   ") for note in section.notes]
        if self.notes:
            out += ["", "Good to know:"]
            out += [_wrap("- " + note, "  ", "  ") for note in self.notes]
        out += [
            "",
            f"Last, register {self.title} with Lifeline. Replace each <...> below with the value "
            f"{self.title} shows:",
        ]
        width = max(len(p.token) for p in self.placeholders)
        out += [
            _wrap(f"{p.token.ljust(width)}  {p.where}", "  ", " " * (width + 2))
            for p in self.placeholders
        ]
        out += ["", self.add.shell()]
        return "\n".join(out) + "\n"

    def document(self) -> dict[str, Any]:
        """The machine-readable configuration (``--format json``)."""
        if self.pasteable is not None:
            return self.pasteable
        return {
            "lms": self.lms,
            "title": self.title,
            "tool": tool_document(self.urls),
            "dynamic_registration": {
                "supported": self.supports_dynamic_registration,
                "url": self.urls.register if self.supports_dynamic_registration else None,
                "how": self.dynamic_registration,
            },
            "sections": [
                {
                    "title": s.title,
                    "fields": [{"label": f.label, "value": f.value} for f in s.fields],
                    "notes": list(s.notes),
                }
                for s in self.sections
            ],
            "notes": list(self.notes),
            "platform_add": {
                "argv": self.add.argv(),
                "command": self.add.shell(),
                "placeholders": [{"name": p.name, "where": p.where} for p in self.placeholders],
            },
        }


def tool_document(urls: tc.ToolUrls) -> dict[str, Any]:
    return {
        "name": tc.TOOL_NAME,
        "description": tc.TOOL_DESCRIPTION,
        "base_url": urls.base_url,
        "domain": urls.domain,
        "login_url": urls.login,
        "launch_url": urls.launch,
        "redirect_uris": list(urls.redirect_uris),
        "jwks_url": urls.jwks,
        "registration_url": urls.register,
        "icon_url": urls.icon,
        "scopes": list(tc.SCOPES),
        "claims": list(tc.CLAIMS),
        "messages": [tc.MESSAGE_RESOURCE_LINK, tc.MESSAGE_DEEP_LINKING],
        "custom_parameters": dict(tc.CUSTOM_PARAMETERS),
    }


def _wrap(text: str, indent: str = "", hanging: str = "") -> str:
    return textwrap.fill(
        text,
        width=96,
        initial_indent=indent,
        subsequent_indent=indent + hanging,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _render_fields(fields: tuple[Field, ...]) -> list[str]:
    if not fields:
        return []
    width = min(max(len(f.label) for f in fields), 48)
    lines = []
    for f in fields:
        values = f.value.splitlines() or [""]
        if len(f.label) > width or len(values) > 1:
            lines.append(f"   {f.label}:")
            lines += [f"       {v}" for v in values]
        else:
            lines.append(f"   {f.label.ljust(width)}  {values[0]}")
    return lines


def _custom_lines(params: dict[str, str]) -> str:
    return "\n".join(f"{name}={value}" for name, value in params.items())


def _yes(what: str = "") -> str:
    return "ticked" + (f" ({what})" if what else "")


# -- Canvas -----------------------------------------------------------------------------------


def canvas_developer_key(urls: tc.ToolUrls) -> dict[str, Any]:
    """The LTI 1.3 configuration JSON of a Canvas developer key ("Paste JSON")."""
    placements: list[dict[str, Any]] = []
    for placement in tc.PLACEMENTS:
        entry: dict[str, Any] = {
            "placement": placement.name,
            "message_type": placement.message_type,
            "text": placement.text,
            "icon_url": urls.icon,
            "target_link_uri": urls.launch,
        }
        if not placement.enabled_by_default:
            # Hidden in course menus until a teacher turns it on (Settings > Navigation).
            entry["default"] = "disabled"
        if placement.message_type == tc.MESSAGE_DEEP_LINKING:
            entry["selection_width"] = 800
            entry["selection_height"] = 600
        placements.append(entry)
    return {
        "title": tc.TOOL_NAME,
        "description": tc.TOOL_DESCRIPTION,
        "oidc_initiation_url": urls.login,
        "target_link_uri": urls.launch,
        "public_jwk_url": urls.jwks,
        "scopes": list(tc.SCOPES),
        "extensions": [
            {
                "platform": "canvas.instructure.com",
                "domain": urls.domain,
                "tool_id": "lifeline",
                "privacy_level": "public",
                "settings": {
                    "text": tc.TOOL_NAME,
                    "icon_url": urls.icon,
                    "placements": placements,
                },
            }
        ],
        "custom_fields": dict(tc.CANVAS_CUSTOM_PARAMETERS),
    }


def _canvas(urls: tc.ToolUrls) -> PlatformConfig:
    key = canvas_developer_key(urls)
    placements = "; ".join(
        f"{p.name} ({p.message_type}"
        + ("" if p.enabled_by_default else ", hidden until a teacher enables it")
        + ")"
        for p in tc.PLACEMENTS
    )
    return PlatformConfig(
        lms="canvas",
        title="Canvas",
        urls=urls,
        supports_dynamic_registration=True,
        dynamic_registration=(
            "in Admin > Developer Keys, choose + Developer Key > + LTI Registration and paste "
            f"{urls.register} (Canvas releases since 2024; newer ones also offer it under "
            "Admin > Apps). Canvas then creates the key and its deployment for you. If your "
            "Canvas has no such option, use the developer key below."
        ),
        sections=(
            Section(
                "Admin > Developer Keys > + Developer Key > + LTI Key",
                (
                    Field("Key Name", tc.TOOL_NAME),
                    Field("Owner Email", "(your address: who to ask about this key)"),
                    Field("Redirect URIs", "\n".join(urls.redirect_uris)),
                    Field("Method", "Paste JSON"),
                    Field("LTI 1.3 Configuration", "(paste the JSON below)"),
                ),
                (
                    "Save, then switch the key's State to ON. The Client ID is the number in "
                    "the key's Details column. Placements: " + placements + ".",
                    "`lifeline platform config canvas --format json > lifeline-key.json` "
                    "writes the same JSON to a file.",
                ),
                block=json.dumps(key, indent=2),
            ),
            Section(
                "Admin > (the account) > Settings > Apps > View App Configurations > + App",
                (
                    Field("Configuration Type", "By Client ID"),
                    Field("Client ID", "<CLIENT_ID> (from step 1)"),
                ),
                (
                    "Submit, then Install. Open the app's gear menu > Deployment Id and copy "
                    "it. Install it in a sub-account or a single course instead to limit who "
                    "sees Lifeline.",
                ),
            ),
        ),
        placeholders=(
            Placeholder("CLIENT_ID", "the developer key's Client ID (Details column)"),
            Placeholder("DEPLOYMENT_ID", "the app's Deployment Id (gear menu in Settings > Apps)"),
            Placeholder(
                "CANVAS_HOST",
                "your Canvas host name, e.g. school.instructure.com "
                "(sso.canvaslms.com works too for Instructure-hosted Canvas)",
            ),
        ),
        add=AddCommand(
            name="Canvas",
            issuer="https://canvas.instructure.com",
            client_id="<CLIENT_ID>",
            auth_url="https://sso.canvaslms.com/api/lti/authorize_redirect",
            token_url="https://<CANVAS_HOST>/login/oauth2/token",
            keyset_url="https://sso.canvaslms.com/api/lti/security/jwks",
            deployment_id="<DEPLOYMENT_ID>",
        ),
        notes=(
            "Instructure's beta and test environments are other issuers: "
            "https://canvas.beta.instructure.com with sso.beta.canvaslms.com, and "
            "https://canvas.test.instructure.com with sso.test.canvaslms.com. Register each one "
            "you launch from with its own `lifeline platform add`.",
            "Self-hosted Canvas: the issuer is the lti_iss of config/security.yml, and the "
            "authorize_redirect and security/jwks URLs are on your own Canvas host.",
            "Unknown substitution variables are sent literally (e.g. '$Canvas.user.id'); "
            "Lifeline treats them as absent.",
        ),
        pasteable=key,
    )


# -- Moodle -----------------------------------------------------------------------------------


def _moodle(urls: tc.ToolUrls) -> PlatformConfig:
    return PlatformConfig(
        lms="moodle",
        title="Moodle",
        urls=urls,
        supports_dynamic_registration=True,
        dynamic_registration=(
            "Moodle 3.10 and later (4.1+ recommended): Site administration > Plugins > Activity "
            f"modules > External tool > Manage tools, paste {urls.register} into 'Tool URL' "
            "and click 'Add LTI Advantage'. Then check the new tool's Services and Privacy "
            "settings as in steps 2 and 3 below."
        ),
        sections=(
            Section(
                "Site administration > Plugins > Activity modules > External tool > Manage tools "
                "> configure a tool manually",
                (
                    Field("Tool name", tc.TOOL_NAME),
                    Field("Tool URL", urls.launch),
                    Field("Tool description", tc.TOOL_DESCRIPTION),
                    Field("LTI version", "LTI 1.3"),
                    Field("Public key type", "Keyset URL"),
                    Field("Public keyset", urls.jwks),
                    Field("Initiate login URL", urls.login),
                    Field("Redirection URI(s)", "\n".join(urls.redirect_uris)),
                    Field("Custom parameters", _custom_lines(tc.CUSTOM_PARAMETERS)),
                    Field(
                        "Tool configuration usage",
                        "Show in activity chooser and as a preconfigured tool",
                    ),
                    Field("Default launch container", "Embed, without blocks"),
                    Field("Supports Deep Linking (Content-Item Message)", _yes()),
                    Field("Content Selection URL", urls.launch),
                    Field("Icon URL", urls.icon),
                ),
            ),
            Section(
                "Services (same form)",
                (
                    Field(
                        "IMS LTI Assignment and Grade Services",
                        "Use this service for grade sync and column management",
                    ),
                    Field(
                        "IMS LTI Names and Role Provisioning",
                        "Use this service to retrieve members' information as per privacy settings",
                    ),
                    Field("Tool Settings", "Do not use this service (Lifeline does not use it)"),
                ),
            ),
            Section(
                "Privacy (same form)",
                (
                    Field("Share launcher's name with tool", "Always"),
                    Field("Share launcher's email with tool", "Always"),
                    Field("Accept grades from the tool", "Delegate to teacher"),
                ),
                (
                    "Save changes. On Manage tools, click the list icon ('View configuration "
                    "details') on Lifeline's card to see the values for the command below.",
                ),
            ),
        ),
        placeholders=(
            Placeholder(
                "MOODLE_URL",
                "'Platform ID' (your Moodle's address, e.g. https://moodle.example.edu); the "
                "auth, token and keyset URLs below are shown there too",
            ),
            Placeholder("CLIENT_ID", "'Client ID'"),
            Placeholder("DEPLOYMENT_ID", "'Deployment ID'"),
        ),
        add=AddCommand(
            name="Moodle",
            issuer="<MOODLE_URL>",
            client_id="<CLIENT_ID>",
            auth_url="<MOODLE_URL>/mod/lti/auth.php",
            token_url="<MOODLE_URL>/mod/lti/token.php",
            keyset_url="<MOODLE_URL>/mod/lti/certs.php",
            deployment_id="<DEPLOYMENT_ID>",
        ),
        notes=(
            "Teachers add Lifeline with 'Add an activity or resource > External tool' and "
            "pick it with 'Select content' (deep linking).",
            "If learners see a cookie or 'could not match this launch' page, set 'Default "
            "launch container' to 'New window'.",
        ),
    )


# -- Brightspace ------------------------------------------------------------------------------


def _brightspace(urls: tc.ToolUrls) -> PlatformConfig:
    return PlatformConfig(
        lms="brightspace",
        title="Brightspace",
        urls=urls,
        supports_dynamic_registration=True,
        dynamic_registration=(
            "Admin Tools > Manage Extensibility > LTI Advantage > Register Tool, choose "
            f"'Dynamic' and paste {urls.register} (Brightspace 20.21 and later; check your "
            "release notes). Brightspace registers the tool disabled: review it, enable it, then "
            "create the deployment and links as in steps 2 and 3."
        ),
        sections=(
            Section(
                "Admin Tools > Manage Extensibility > LTI Advantage > Register Tool > Standard",
                (
                    Field("Name", tc.TOOL_NAME),
                    Field("Description", tc.TOOL_DESCRIPTION),
                    Field("Domain", urls.base_url),
                    Field("Redirect URLs", "\n".join(urls.redirect_uris)),
                    Field("OpenID Connect Login URL", urls.login),
                    Field("Target Link URI", urls.launch),
                    Field("Keyset URL", urls.jwks),
                    Field(
                        "Extensions",
                        "Assignment and Grade Services; Deep Linking; Names and Role "
                        "Provisioning Services (all ticked)",
                    ),
                    Field("Roles", "Send Institution Role: ticked"),
                    Field("Custom Parameters", _custom_lines(tc.CUSTOM_PARAMETERS)),
                ),
                (
                    "Register. Brightspace then shows Client Id, Brightspace Keyset URL, "
                    "Brightspace OAuth2 Access Token URL, OpenID Connect Authentication Endpoint, "
                    "Brightspace OAuth2 Audience and Issuer.",
                ),
            ),
            Section(
                "View Deployments > New Deployment",
                (
                    Field("Tool", tc.TOOL_NAME),
                    Field("Name", tc.TOOL_NAME),
                    Field("Enabled", _yes()),
                    Field(
                        "Extensions",
                        "Assignment and Grade Services; Names and Role Provisioning Services",
                    ),
                    Field(
                        "Security Settings",
                        "Org Unit Information, User Information: Name, Email, Role (no Anonymous)",
                    ),
                ),
                (
                    "Add Org Units (where Lifeline may be used), Save and Close, then open the "
                    "deployment again and copy its Deployment Id.",
                ),
            ),
            Section(
                "(the deployment) > View Links > New Link",
                (
                    Field("Name", f"{tc.TOOL_NAME} help"),
                    Field("URL", urls.launch),
                    Field("Type", "Deep Linking Quicklink"),
                ),
                (
                    "Teachers then find Lifeline under Existing Activities > External Learning "
                    "Tools in a course's Content.",
                ),
            ),
        ),
        placeholders=(
            Placeholder(
                "BRIGHTSPACE_URL",
                "'Issuer' (your Brightspace address, e.g. https://school.brightspace.com)",
            ),
            Placeholder("CLIENT_ID", "'Client Id' of the registration"),
            Placeholder("DEPLOYMENT_ID", "'Deployment Id' of the deployment (step 2)"),
        ),
        add=AddCommand(
            name="Brightspace",
            issuer="<BRIGHTSPACE_URL>",
            client_id="<CLIENT_ID>",
            auth_url="<BRIGHTSPACE_URL>/d2l/lti/authenticate",
            token_url="https://auth.brightspace.com/core/connect/token",
            keyset_url="<BRIGHTSPACE_URL>/d2l/.well-known/jwks",
            deployment_id="<DEPLOYMENT_ID>",
            token_audience="https://api.brightspace.com/auth/token",
        ),
        notes=(
            "The token URL and audience above are D2L's hosted ones; if your registration page "
            "shows other values for 'Brightspace OAuth2 Access Token URL' or 'Brightspace "
            "OAuth2 Audience', use those.",
        ),
    )


# -- Blackboard -------------------------------------------------------------------------------


def _blackboard(urls: tc.ToolUrls) -> PlatformConfig:
    return PlatformConfig(
        lms="blackboard",
        title="Blackboard Learn",
        urls=urls,
        supports_dynamic_registration=False,
        dynamic_registration=(
            "not used for Blackboard. Anthology's Developer Portal has an LTI dynamic "
            "registration option, but Anthology itself lists compliance problems with it "
            "(Behind the Blackboard article 000090618, 2025); register through the portal form "
            "below, then deploy with the Application ID."
        ),
        sections=(
            Section(
                "https://developer.blackboard.com (Anthology Developer Portal) > My "
                "Applications > Register a REST or LTI application",
                (
                    Field("Application Name", tc.TOOL_NAME),
                    Field("Description", tc.TOOL_DESCRIPTION),
                    Field("Domain(s)", urls.domain),
                    Field("My Integration supports LTI 1.3", "on"),
                    Field("Login Initiation URL", urls.login),
                    Field("Tool Redirect URL(s)", ",".join(urls.redirect_uris)),
                    Field("Tool JWKS URL", urls.jwks),
                    Field("Signing Algorithm", "RS256"),
                    Field("Custom Parameters", _custom_lines(tc.CUSTOM_PARAMETERS)),
                ),
                (
                    "Register application, and keep the Application ID it shows (Learn calls "
                    "it the Client ID). One registration serves every Learn site that uses "
                    "this Lifeline.",
                ),
            ),
            Section(
                "Learn: Administrator Panel > Integrations > LTI Tool Providers > Register LTI "
                "1.3/Advantage Tool",
                (
                    Field("Client ID", "<APPLICATION_ID> (from step 1)"),
                    Field("Tool Status", "Approved"),
                    Field("User Fields to Send", "Role in Course, Name, Email Address"),
                    Field("Allow grade service access", "Yes"),
                    Field("Allow Membership Service Access", "Yes"),
                ),
                ("Submit, and copy the Deployment ID Learn shows for the tool.",),
            ),
            Section(
                "LTI Tool Providers > Lifeline > Manage Placements > Create Placement",
                (
                    Field("Label", f"{tc.TOOL_NAME} help"),
                    Field("Handle", "lifeline"),
                    Field("Type", "Deep Linking content tool"),
                    Field("Target Link URI", urls.launch),
                ),
                (
                    "Optionally a second placement of Type 'Course tool' (same Target Link "
                    "URI) gives every course a Lifeline entry in its tools.",
                ),
            ),
        ),
        placeholders=(
            Placeholder("APPLICATION_ID", "the Developer Portal's Application ID (step 1)"),
            Placeholder("DEPLOYMENT_ID", "the Deployment ID Learn shows (step 2)"),
        ),
        add=AddCommand(
            name="Blackboard Learn",
            issuer="https://blackboard.com",
            client_id="<APPLICATION_ID>",
            auth_url="https://developer.blackboard.com/api/v1/gateway/oidcauth",
            token_url="https://developer.blackboard.com/api/v1/gateway/oauth2/jwttoken",
            keyset_url=(
                "https://developer.blackboard.com/api/v1/management/applications/"
                "<APPLICATION_ID>/jwks.json"
            ),
            deployment_id="<DEPLOYMENT_ID>",
        ),
        notes=(
            "Every Learn site shares the issuer https://blackboard.com. A second Learn site "
            "deploying the same Application ID is another deployment of this registration: "
            "`lifeline platform add-deployment <platform number> <its DEPLOYMENT_ID>`.",
        ),
    )


# -- Open edX ---------------------------------------------------------------------------------


def _openedx(urls: tc.ToolUrls) -> PlatformConfig:
    custom = json.dumps([f"{k}={v}" for k, v in tc.CUSTOM_PARAMETERS.items()])
    return PlatformConfig(
        lms="openedx",
        title="Open edX",
        urls=urls,
        supports_dynamic_registration=False,
        dynamic_registration=(
            "Open edX (the LTI Consumer component) does not offer LTI Dynamic Registration; "
            "configure the component by hand."
        ),
        sections=(
            Section(
                "Studio > (the course) > Settings > Advanced Settings",
                (Field("Advanced Module List", '["lti_consumer"]'),),
                ("Save changes.",),
            ),
            Section(
                "Studio > (a unit) > Add New Component > Advanced > LTI Consumer > Edit",
                (
                    Field("Display Name", tc.TOOL_NAME),
                    Field("LTI Version", "LTI 1.3"),
                    Field("Tool Launch URL", urls.launch),
                    Field("Tool Initiate Login URL", urls.login),
                    Field("Registered Redirect URIs", json.dumps(list(urls.redirect_uris))),
                    Field("Tool Public Key Mode", "Keyset URL"),
                    Field("Tool Keyset URL", urls.jwks),
                    Field("Deep linking", "True"),
                    Field("Deep Linking Launch URL", urls.launch),
                    Field(
                        "LTI Assignment and Grades Service",
                        "Allow tools to manage and submit grade (programmatic)",
                    ),
                    Field("Enable LTI NRPS", "True"),
                    Field("Custom Parameters", custom),
                    Field("Request user's username", "True"),
                    Field("Request user's full name", "True"),
                    Field("Request user's email", "True"),
                    Field("LTI Launch Target", "Inline"),
                ),
                (
                    "Save. The component then shows Client ID, Deployment ID, Keyset URL, "
                    "Access Token URL and Login URL (older releases: Client, OAuth Token URL, "
                    "OIDC Callback URL).",
                ),
            ),
        ),
        placeholders=(
            Placeholder(
                "LMS_URL",
                "your Open edX LMS address (its LMS_ROOT_URL, e.g. https://courses.example.edu), "
                "the issuer of its launches",
            ),
            Placeholder("CLIENT_ID", "'Client ID'"),
            Placeholder("DEPLOYMENT_ID", "'Deployment ID' (usually 1)"),
            Placeholder("LOGIN_URL", "'Login URL'"),
            Placeholder("ACCESS_TOKEN_URL", "'Access Token URL'"),
            Placeholder("KEYSET_URL", "'Keyset URL'"),
        ),
        add=AddCommand(
            name="Open edX",
            issuer="<LMS_URL>",
            client_id="<CLIENT_ID>",
            auth_url="<LOGIN_URL>",
            token_url="<ACCESS_TOKEN_URL>",
            keyset_url="<KEYSET_URL>",
            deployment_id="<DEPLOYMENT_ID>",
        ),
        notes=(
            "Each LTI Consumer component has its own Client ID unless it uses a reusable "
            "configuration (Configuration Type 'Reusable Configuration', set up by your Open "
            "edX operator): prefer that, so one `lifeline platform add` covers the course.",
            "Names and roles need 'Enable LTI NRPS'; gradebook reporting needs the "
            "programmatic Assignment and Grades Service.",
            "Open edX sends names and email addresses over LTI only where personal data "
            "sharing is allowed for the course (the lti_consumer 'allow PII sharing' setting "
            "in the Django admin, on recent releases); without them tutors see ids, not names.",
        ),
    )


# -- Sakai ------------------------------------------------------------------------------------


def _sakai(urls: tc.ToolUrls) -> PlatformConfig:
    return PlatformConfig(
        lms="sakai",
        title="Sakai",
        urls=urls,
        supports_dynamic_registration=True,
        dynamic_registration=(
            "recent Sakai releases (23 and later, we believe) can register an LTI Advantage "
            f"tool from its registration URL ({urls.register}) in Administration Workspace > "
            "External Tools; the wording of that option differs between releases and we have "
            "not checked each one. The manual entry below works on Sakai 21 and later."
        ),
        sections=(
            Section(
                "Administration Workspace > External Tools > Install LTI 1.x Tool",
                (
                    Field("Tool Title", tc.TOOL_NAME),
                    Field("Button Text", tc.TOOL_NAME),
                    Field("Description", tc.TOOL_DESCRIPTION),
                    Field("Launch URL", urls.launch),
                    Field("Launch Key / Launch Secret", "(leave empty)"),
                    Field("Send User Names to External Tool", _yes()),
                    Field("Send Email Addresses to External Tool", _yes()),
                    Field("Provide Roster to External Tool", _yes("Names and Roles")),
                    Field("Allow External Tool to return grades", _yes("Assignment and Grade")),
                    Field("Allow the tool to be launched as a link", _yes()),
                    Field(
                        "Allow External Tool to configure itself",
                        _yes("deep linking / content item selection"),
                    ),
                    Field("Tool supports LTI 1.3", _yes()),
                    Field("LTI 1.3 Tool Keyset URL", urls.jwks),
                    Field("LTI 1.3 Tool OpenID Connect/Initialization Endpoint", urls.login),
                    Field("LTI 1.3 Tool Redirect Endpoint(s)", "\n".join(urls.redirect_uris)),
                    Field("Custom Parameters", _custom_lines(tc.CUSTOM_PARAMETERS)),
                ),
                (
                    "Save, then open the tool's entry (View) to see the LTI 1.3 Platform values "
                    "used below. Checkbox wording varies a little between Sakai releases.",
                ),
            ),
        ),
        placeholders=(
            Placeholder("ISSUER_URL", "'LTI 1.3 Platform Issuer'"),
            Placeholder("CLIENT_ID", "'LTI 1.3 Client ID'"),
            Placeholder("DEPLOYMENT_ID", "'LTI 1.3 Deployment ID'"),
            Placeholder("OIDC_AUTH_URL", "'LTI 1.3 Platform OIDC Authentication URL'"),
            Placeholder("TOKEN_URL", "'LTI 1.3 Platform OAuth2 Bearer Token Retrieval URL'"),
            Placeholder("KEYSET_URL", "'LTI 1.3 Platform OAuth2 Well-Known/KeySet URL'"),
        ),
        add=AddCommand(
            name="Sakai",
            issuer="<ISSUER_URL>",
            client_id="<CLIENT_ID>",
            auth_url="<OIDC_AUTH_URL>",
            token_url="<TOKEN_URL>",
            keyset_url="<KEYSET_URL>",
            deployment_id="<DEPLOYMENT_ID>",
        ),
        notes=(
            "Instructors add Lifeline in Lessons with Add Content > Add Learning App (deep "
            "linking), or as a site tool in Site Info > Manage Tools.",
        ),
    )


# -- Schoology --------------------------------------------------------------------------------


def _schoology(urls: tc.ToolUrls) -> PlatformConfig:
    return PlatformConfig(
        lms="schoology",
        title="Schoology",
        urls=urls,
        supports_dynamic_registration=False,
        dynamic_registration=(
            "Schoology does not offer LTI Dynamic Registration; create an LTI 1.3 app in the "
            "App Center."
        ),
        sections=(
            Section(
                "App Center > My Developer Apps > + Add App",
                (
                    Field("App Name", tc.TOOL_NAME),
                    Field("Description", tc.TOOL_DESCRIPTION),
                    Field("Type of App", "LTI 1.3 App"),
                    Field("Configuration Type", "Manual"),
                    Field("Privacy", "Send Name and Email/Username of user who launches the tool"),
                    Field("Deep Linking", _yes()),
                    Field("Assignment and Grade Services", _yes()),
                    Field("Names and Roles Services", _yes()),
                    Field("JWKS URL", urls.jwks),
                    Field("Domain/URL", urls.launch),
                    Field("OIDC Login Init URL", urls.login),
                    Field("Redirect URLs", ",".join(urls.redirect_uris)),
                ),
                (
                    "Accept the terms and Submit. Labels of the Privacy choices differ a little "
                    "between Schoology releases: pick the one that sends name and email.",
                ),
            ),
            Section(
                "My Developer Apps > Lifeline > Install LTI 1.3 App > I Agree > Add to "
                "Organization",
                (),
                (
                    "Choose the courses and groups that may use it. Then Options > API Info on "
                    "the app shows its Client ID, and Configure on the installed app shows the "
                    "Deployment ID.",
                ),
            ),
        ),
        placeholders=(
            Placeholder("CLIENT_ID", "'Client ID' (Options > API Info)"),
            Placeholder("DEPLOYMENT_ID", "'Deployment ID' (Configure on the installed app)"),
        ),
        add=AddCommand(
            name="Schoology",
            issuer="https://schoology.schoology.com",
            client_id="<CLIENT_ID>",
            auth_url="https://lti-service.svc.schoology.com/lti-service/authorize-redirect",
            token_url="https://lti-service.svc.schoology.com/lti-service/access-token",
            keyset_url="https://lti-service.svc.schoology.com/lti-service/.well-known/jwks",
            deployment_id="<DEPLOYMENT_ID>",
        ),
        notes=(
            "Teachers add Lifeline from a course's Add Materials menu (Schoology sends deep "
            "linking requests only from there).",
            "Schoology returns at most 100 members per roster page; Lifeline follows the pages.",
        ),
    )


_BUILDERS = {
    "canvas": _canvas,
    "moodle": _moodle,
    "brightspace": _brightspace,
    "blackboard": _blackboard,
    "openedx": _openedx,
    "sakai": _sakai,
    "schoology": _schoology,
}


def build(lms: str, urls: tc.ToolUrls) -> PlatformConfig:
    """The configuration of ``lms`` (one of ``LMS_NAMES``) for the Lifeline at ``urls``."""
    try:
        builder = _BUILDERS[lms.lower()]
    except KeyError:
        raise ValueError(f"Unknown LMS {lms!r}; known: {', '.join(LMS_NAMES)}.") from None
    return builder(urls)
