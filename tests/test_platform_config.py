"""`lifeline platform config <lms>`: what an LMS admin pastes, and the `platform add` it ends with.

The printed `lifeline platform add` command is run for real (a subprocess against its own
PostgreSQL database), with each <PLACEHOLDER> filled the way an admin would.
"""

from __future__ import annotations

import json
import re
import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from lti_tool.cli import main
from lti_tool.lti import tool_config as tc
from lti_tool.lti.models import Platform
from lti_tool.lti.platform_config import (
    LMS_NAMES,
    BaseUrlError,
    build,
    canvas_developer_key,
    check_base_url,
)
from tests.test_cli import Cli, fresh_database

BASE = "https://lifeline.example.edu"
URLS = tc.ToolUrls(BASE)
DOCS = Path(__file__).resolve().parent.parent / "docs"
README = DOCS.parent / "README.md"
PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*)>")


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    """The CLI in this process (the `platform add` test below runs the real console script)."""
    return CliRunner().invoke(main, list(args), env=env or {"LIFELINE_BASE_URL": None})


def printed(lms: str, *extra: str) -> str:
    result = run("platform", "config", lms, "--base-url", BASE, *extra)
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def add_command(text: str) -> list[str]:
    """The `lifeline platform add ...` the output ends with, split as a shell would."""
    start = text.rindex("lifeline platform add")
    command = text[start:].replace("\\\n", " ")
    assert command.strip().count("\n") == 0, "the command must be the end of the output"
    return shlex.split(command)


def fill(argv: list[str], tag: str) -> list[str]:
    """Replace each <NAME> as an admin would: *_URL by an https address, *_HOST by a host
    name, anything else by an opaque value (unique per test run)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.endswith("_URL"):
            return f"https://lms-{tag}.example.edu"
        if name.endswith("_HOST"):
            return f"lms-{tag}.example.edu"
        return f"{name.lower()}-{tag}"

    return [PLACEHOLDER.sub(value, arg) for arg in argv]


# -- what is printed --------------------------------------------------------------------------


@pytest.mark.parametrize("lms", LMS_NAMES)
def test_every_lms_prints_every_tool_url_in_its_own_fields(lms: str) -> None:
    config = build(lms, URLS)
    text = printed(lms)
    assert text == config.text()
    for url in (URLS.login, URLS.launch, URLS.jwks, URLS.register, URLS.icon):
        assert url in text
    # Not only in the summary: the LMS's own fields carry login, launch and keyset.
    values = "\n".join(f.value for s in config.sections for f in s.fields) + "\n".join(
        s.block for s in config.sections
    )
    for url in (URLS.login, URLS.jwks, *URLS.redirect_uris):
        assert url in values, f"{lms}: {url} is in no field"
    if config.supports_dynamic_registration:
        assert URLS.register in config.dynamic_registration


@pytest.mark.parametrize("lms", ["moodle", "brightspace", "blackboard", "sakai"])
def test_custom_parameters_are_printed_as_name_value_lines(lms: str) -> None:
    text = printed(lms)
    for name, variable in tc.CUSTOM_PARAMETERS.items():
        assert f"{name}={variable}" in text


def test_open_edx_custom_parameters_are_its_json_list() -> None:
    config = build("openedx", URLS)
    field = next(f for s in config.sections for f in s.fields if f.label == "Custom Parameters")
    assert json.loads(field.value) == [f"{k}={v}" for k, v in tc.CUSTOM_PARAMETERS.items()]


def test_moodle_services_and_privacy_use_moodle_wording() -> None:
    fields = {f.label: f.value for s in build("moodle", URLS).sections for f in s.fields}
    assert fields["LTI version"] == "LTI 1.3"
    assert fields["Public key type"] == "Keyset URL"
    assert fields["Public keyset"] == URLS.jwks
    assert fields["Initiate login URL"] == URLS.login
    assert fields["Redirection URI(s)"] == URLS.launch
    assert fields["IMS LTI Names and Role Provisioning"] == (
        "Use this service to retrieve members' information as per privacy settings"
    )
    assert "column management" in fields["IMS LTI Assignment and Grade Services"]
    assert fields["Share launcher's name with tool"] == "Always"
    assert fields["Share launcher's email with tool"] == "Always"


def test_brightspace_command_carries_the_token_audience() -> None:
    add = build("brightspace", URLS).add
    assert add.token_audience == "https://api.brightspace.com/auth/token"
    assert add.token_url == "https://auth.brightspace.com/core/connect/token"


@pytest.mark.parametrize(
    ("lms", "issuer"),
    [
        ("canvas", "https://canvas.instructure.com"),
        ("blackboard", "https://blackboard.com"),
        ("schoology", "https://schoology.schoology.com"),
    ],
)
def test_fixed_issuers(lms: str, issuer: str) -> None:
    assert build(lms, URLS).add.issuer == issuer


@pytest.mark.parametrize("lms", LMS_NAMES)
def test_every_placeholder_of_the_command_is_explained(lms: str) -> None:
    config = build(lms, URLS)
    used = {m for arg in config.add.argv() for m in PLACEHOLDER.findall(arg)}
    explained = {p.name for p in config.placeholders}
    assert used == explained
    text = config.text()
    for placeholder in config.placeholders:
        assert placeholder.token in text
    # The shell form splits back into exactly the argv.
    assert shlex.split(config.add.shell().replace("\\\n", " ")) == config.add.argv()
    assert add_command(text) == config.add.argv()


@pytest.mark.parametrize("lms", LMS_NAMES)
def test_json_format_is_machine_readable(lms: str) -> None:
    document = json.loads(printed(lms, "--format", "json"))
    if lms == "canvas":
        assert document == canvas_developer_key(URLS)
        return
    assert document["lms"] == lms
    assert document["tool"]["login_url"] == URLS.login
    assert document["tool"]["launch_url"] == URLS.launch
    assert document["tool"]["jwks_url"] == URLS.jwks
    assert document["tool"]["scopes"] == list(tc.SCOPES)
    assert document["platform_add"]["argv"][:3] == ["lifeline", "platform", "add"]
    assert all(section["fields"] or section["notes"] for section in document["sections"])


# -- Canvas developer key -----------------------------------------------------------------------


def test_canvas_developer_key_json() -> None:
    key = json.loads(printed("canvas", "--format", "json"))
    for required in ("title", "description", "oidc_initiation_url", "target_link_uri"):
        assert isinstance(key[required], str) and key[required]
    assert key["oidc_initiation_url"] == URLS.login
    assert key["target_link_uri"] == URLS.launch
    assert key["public_jwk_url"] == URLS.jwks
    assert "public_jwk" not in key  # the keyset URL follows key rotation; a pasted key would not
    assert key["scopes"] == list(tc.SCOPES)
    assert key["custom_fields"] == tc.CANVAS_CUSTOM_PARAMETERS
    (extension,) = key["extensions"]
    assert extension["platform"] == "canvas.instructure.com"
    assert extension["privacy_level"] == "public"  # names and email: tutors see who asks
    assert extension["domain"] == URLS.domain
    settings = extension["settings"]
    assert settings["text"] == tc.TOOL_NAME
    assert settings["icon_url"] == URLS.icon
    placements = {p["placement"]: p for p in settings["placements"]}
    assert set(placements) == {"course_navigation", "link_selection", "assignment_selection"}
    assert placements["course_navigation"]["message_type"] == "LtiResourceLinkRequest"
    assert placements["course_navigation"]["default"] == "disabled"
    for name in ("link_selection", "assignment_selection"):
        assert placements[name]["message_type"] == "LtiDeepLinkingRequest"
        assert "default" not in placements[name]
    for placement in placements.values():
        assert placement["target_link_uri"] == URLS.launch
        assert placement["text"]


def test_canvas_text_holds_the_same_json_to_paste() -> None:
    text = printed("canvas")
    start = text.index("\n     {") + 1
    end = text.index("\n     }\n", start) + len("\n     }")
    assert json.loads(text[start:end]) == canvas_developer_key(URLS)


# -- base URL and unknown LMS ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["http://lifeline.example.edu", "http://10.0.0.5:8000", "ftp://lifeline.example.edu", "x"],
)
def test_a_base_url_that_is_not_https_is_refused(bad: str) -> None:
    result = run("platform", "config", "moodle", "--base-url", bad)
    assert result.exit_code == 2
    assert "--base-url" in result.output
    assert "https" in result.output
    with pytest.raises(BaseUrlError):
        check_base_url(bad)


@pytest.mark.parametrize("bad", ["https://[lifeline.example.edu", "https://l.example.edu:99999"])
def test_a_base_url_that_does_not_parse_is_a_usage_error_not_a_traceback(bad: str) -> None:
    result = run("platform", "config", "moodle", "--base-url", bad)
    assert result.exit_code == 2, result.output
    assert "is not a valid URL" in result.output


def test_plain_http_is_accepted_on_loopback_only() -> None:
    for ok in ("http://127.0.0.1:5000", "http://localhost:5000/", "https://l.example.edu/x/"):
        assert check_base_url(ok).base_url == ok.rstrip("/")
    result = run("platform", "config", "sakai", "--base-url", "http://127.0.0.1:5000")
    assert result.exit_code == 0
    assert "http://127.0.0.1:5000/lti/login" in result.stdout


def test_a_query_or_fragment_is_refused() -> None:
    for bad in ("https://l.example.edu/?a=1", "https://l.example.edu/#x"):
        with pytest.raises(BaseUrlError, match="query"):
            check_base_url(bad)


def test_base_url_defaults_to_the_setting() -> None:
    result = run(
        "platform", "config", "moodle", env={"LIFELINE_BASE_URL": "https://ll.example.org/"}
    )
    assert result.exit_code == 0, result.output
    assert "https://ll.example.org/lti/jwks" in result.stdout
    bad = run("platform", "config", "moodle", env={"LIFELINE_BASE_URL": "http://ll.example.org"})
    assert bad.exit_code == 2
    assert "LIFELINE_BASE_URL" in bad.output


def test_without_any_base_url_the_error_says_what_to_pass() -> None:
    result = run("platform", "config", "canvas")
    assert result.exit_code == 2
    assert "--base-url" in result.output
    assert "LIFELINE_BASE_URL" in result.output


def test_lms_name_is_case_insensitive() -> None:
    assert printed("Canvas") == printed("canvas")


# -- for real: the console script, and the printed `platform add` against a database --------------


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, Engine]]:
    with fresh_database("platform_config") as url:
        cli = Cli(url, tmp_path_factory.mktemp("platform-config"))
        assert "up to date" in cli.ok("db", "upgrade")
        engine = create_engine(url)
        yield cli, engine
        engine.dispose()


def test_unknown_lms_exits_2_listing_the_known_ones(upgraded: tuple[Cli, Engine]) -> None:
    cli, _ = upgraded
    result = cli("platform", "config", "d2l", "--base-url", BASE)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "'d2l' is not one of" in result.stderr
    for name in LMS_NAMES:
        assert name in result.stderr


@pytest.mark.parametrize("lms", LMS_NAMES)
def test_the_printed_platform_add_command_works(upgraded: tuple[Cli, Engine], lms: str) -> None:
    cli, engine = upgraded
    # The base URL comes from LIFELINE_BASE_URL (https://lifeline.test in the CLI tests' env).
    text = cli.ok("platform", "config", lms)
    assert "https://lifeline.test/lti/launch" in text
    argv = add_command(text)
    assert argv[:3] == ["lifeline", "platform", "add"]
    tag = uuid.uuid4().hex[:10]
    filled = fill(argv, tag)
    assert not any(PLACEHOLDER.search(arg) for arg in filled)
    out = cli.ok(*filled[1:])
    assert re.match(r"Registered platform #\d+ ", out), out

    options = dict(zip(filled[3::2], filled[4::2], strict=True))
    with Session(engine) as session:
        platform = session.scalars(
            select(Platform).where(
                Platform.issuer == options["--issuer"],
                Platform.client_id == options["--client-id"],
            )
        ).one()
        assert platform.auth_login_url == options["--auth-url"]
        assert platform.auth_token_url == options["--token-url"]
        assert platform.keyset_url == options["--keyset-url"]
        assert platform.token_audience == options.get("--token-audience")
        assert [d.deployment_id for d in platform.deployments] == [options["--deployment-id"]]
        assert platform.status == "active"


# -- the guides --------------------------------------------------------------------------------


@pytest.mark.parametrize("lms", LMS_NAMES)
def test_every_lms_has_a_guide_naming_lifelines_paths(lms: str) -> None:
    guide = (DOCS / "platforms" / f"{lms}.md").read_text()
    for path in ("/lti/login", "/lti/launch", "/lti/jwks"):
        assert path in guide, f"{lms}.md does not mention {path}"
    assert f"lifeline platform config {lms}" in guide
    assert "lifeline platform add" in guide
    assert "/admin" in guide
    for code in ("unknown_issuer", "unknown_client_id", "unknown_deployment"):
        assert code in guide
    if build(lms, URLS).supports_dynamic_registration:
        assert "/lti/register" in guide


def test_guides_index_and_readme_link_every_guide() -> None:
    index = (DOCS / "platforms" / "README.md").read_text()
    readme = README.read_text()
    for lms in LMS_NAMES:
        assert f"({lms}.md)" in index
        assert f"docs/platforms/{lms}.md" in readme
    assert "lifeline platform config" in readme
    # The first two commands of the README stay what they were.
    assert readme.startswith("# Lifeline\n\n```sh\nmake demo ")
    assert readme.splitlines()[4].startswith("make test ")
