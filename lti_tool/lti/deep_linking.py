"""The LtiDeepLinkingResponse: placing "Lifeline help" on an exercise, signed with our key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from pylti1p3.deep_link import DeepLink
from pylti1p3.deep_link_resource import DeepLinkResource
from pylti1p3.registration import Registration

from .keys import SigningKey
from .launch import Launch

MAX_TITLE = 200
MAX_TEXT = 1000


class _ToolRegistration(Registration):
    """pylti1p3 derives ``kid`` from a public key; ours is the key's stored thumbprint."""

    def __init__(self, kid: str) -> None:
        super().__init__()
        self._lifeline_kid = kid

    def get_kid(self) -> str:
        return self._lifeline_kid


class PlacementError(ValueError):
    """The instructor's placement form is invalid; the message names the field."""


@dataclass(frozen=True)
class Placement:
    title: str
    text: str


def check_placement(title: str, text: str) -> Placement:
    title, text = title.strip(), text.strip()
    if not title:
        raise PlacementError("Give the link a title (for example 'Lifeline help').")
    if len(title) > MAX_TITLE:
        raise PlacementError(f"The title is longer than {MAX_TITLE} characters.")
    if len(text) > MAX_TEXT:
        raise PlacementError(f"The description is longer than {MAX_TEXT} characters.")
    return Placement(title=title, text=text)


def response_jwt(
    launch: Launch, key: SigningKey, launch_url: str, placements: list[Placement]
) -> str:
    """Sign the response with pylti1p3's DeepLink (``data`` is echoed as the spec requires)."""
    registration = _ToolRegistration(key.kid)
    registration.set_issuer(launch.issuer).set_client_id(launch.client_id)
    registration.set_tool_private_key(key.pem)
    resources = []
    for placement in placements:
        resource = DeepLinkResource().set_url(launch_url).set_title(placement.title)
        if placement.text:
            resource.set_custom_params({"lifeline_description": placement.text})
        resources.append(resource)
    deep_link = DeepLink(registration, launch.deployment_id, cast(Any, launch.deep_linking))
    message = deep_link.get_message_jwt(resources)
    if "data" not in launch.deep_linking:
        message.pop("https://purl.imsglobal.org/spec/lti-dl/claim/data", None)
    for item, placement in zip(
        message["https://purl.imsglobal.org/spec/lti-dl/claim/content_items"],  # type: ignore[call-overload]
        placements,
        strict=True,
    ):
        if placement.text:
            item["text"] = placement.text
    token: str = deep_link.encode_jwt(message)  # type: ignore[no-untyped-call]
    return token


def return_url(launch: Launch) -> str:
    return str(launch.deep_linking["deep_link_return_url"])
