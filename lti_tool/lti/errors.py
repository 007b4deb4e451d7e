"""Launch failures, each with the words a course admin needs to fix it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LaunchError(Exception):
    """Why a login or launch was refused.

    ``status`` is the HTTP status (always 4xx), ``code`` a stable machine-readable reason,
    ``title`` and ``detail`` are shown to the person in the LMS, ``hint`` says what to do.
    """

    status: int
    code: str
    title: str
    detail: str
    hint: str = ""
    # Set once the registration is known, so its "last error" can be recorded.
    platform_id: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        assert 400 <= self.status < 500, "launch errors are always 4xx"
        super().__init__(f"{self.code}: {self.detail}")

    def as_dict(self) -> dict[str, object]:
        return {
            "error": self.code,
            "title": self.title,
            "detail": self.detail,
            "hint": self.hint,
            "status": self.status,
        }


def bad_request(code: str, detail: str, hint: str = "") -> LaunchError:
    return LaunchError(400, code, "The LMS sent an incomplete or malformed launch", detail, hint)


def unauthorized(code: str, detail: str, hint: str = "") -> LaunchError:
    return LaunchError(401, code, "Lifeline could not verify this launch", detail, hint)


def forbidden(code: str, detail: str, hint: str = "") -> LaunchError:
    return LaunchError(403, code, "This launch is not allowed", detail, hint)


ADMIN_HINT = "Ask your LMS administrator to check Lifeline's registration (see Lifeline's docs)."
RELAUNCH_HINT = "Go back to the course and open Lifeline again."
