"""What ``lifeline demo`` sets up before serving: an administrator for /admin whose password
is printed and kept in the instance folder, and start-up text naming every entry point."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lti_tool.admin.accounts import authenticate
from lti_tool.db import Database, utcnow
from lti_tool.demo_lms.platform import DemoPlatforms, load_or_create_key
from lti_tool.demo_lms.startup import (
    DEMO_ADMIN_EMAIL,
    PASSWORD_FILE,
    DemoAdmin,
    ensure_demo_admin,
    startup_text,
)
from lti_tool.migrate import upgrade


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'demo.db'}")
    upgrade(database.engine)
    yield database
    database.dispose()


def test_the_demo_admin_is_created_once_with_a_kept_password(
    sqlite: Database, tmp_path: Path
) -> None:
    with sqlite.transaction() as session:
        first = ensure_demo_admin(session, tmp_path)
    password_file = tmp_path / PASSWORD_FILE
    assert first.password_file == password_file
    assert password_file.read_text().strip() == first.password
    assert password_file.stat().st_mode & 0o777 == 0o600
    assert len(first.password) >= 12
    with sqlite.transaction() as session:
        assert authenticate(session, DEMO_ADMIN_EMAIL, first.password).account is not None
    # A restart prints the same password and keeps the account.
    with sqlite.transaction() as session:
        again = ensure_demo_admin(session, tmp_path)
    assert again.password == first.password
    with sqlite.transaction() as session:
        assert authenticate(session, DEMO_ADMIN_EMAIL, first.password).account is not None


def test_a_restart_unlocks_the_demo_admin(sqlite: Database, tmp_path: Path) -> None:
    with sqlite.transaction() as session:
        admin = ensure_demo_admin(session, tmp_path)
    for _ in range(5):  # LOCK_AFTER typos lock the account
        with sqlite.transaction() as session:
            authenticate(session, DEMO_ADMIN_EMAIL, "not the password")
    with sqlite.transaction() as session:
        locked = authenticate(session, DEMO_ADMIN_EMAIL, admin.password)
        assert locked.account is None
        assert locked.locked_until is not None and locked.locked_until > utcnow()
    with sqlite.transaction() as session:
        ensure_demo_admin(session, tmp_path)
    with sqlite.transaction() as session:
        assert authenticate(session, DEMO_ADMIN_EMAIL, admin.password).account is not None


def test_a_replaced_password_file_gives_the_account_that_password(
    sqlite: Database, tmp_path: Path
) -> None:
    with sqlite.transaction() as session:
        old = ensure_demo_admin(session, tmp_path)
    (tmp_path / PASSWORD_FILE).write_text("my-own-demo-password\n")
    with sqlite.transaction() as session:
        new = ensure_demo_admin(session, tmp_path)
    assert new.password == "my-own-demo-password"
    with sqlite.transaction() as session:
        assert authenticate(session, DEMO_ADMIN_EMAIL, old.password).account is None
    with sqlite.transaction() as session:
        assert authenticate(session, DEMO_ADMIN_EMAIL, new.password).account is not None
    # Too short to be an admin password: a new random one replaces it.
    (tmp_path / PASSWORD_FILE).write_text("short\n")
    with sqlite.transaction() as session:
        assert len(ensure_demo_admin(session, tmp_path).password) >= 12


def test_the_start_up_text_names_every_entry_point(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "key.pem")
    admin = DemoAdmin(DEMO_ADMIN_EMAIL, "s3cret-password-x", tmp_path / PASSWORD_FILE)
    text = startup_text(
        "http://127.0.0.1:5077", DemoPlatforms("http://127.0.0.1:5077", key), admin, "/data"
    )
    for expected in (
        "http://127.0.0.1:5077/demo/",
        "http://localhost:5077/demo/",  # the cross-site twin
        "http://127.0.0.1:5077/admin/",
        f"email {DEMO_ADMIN_EMAIL}   password s3cret-password-x",
        str(tmp_path / PASSWORD_FILE),
        "http://127.0.0.1:5077/demo/lms-admin/",
        "http://127.0.0.1:5077/lti/register",
        "Data: /data",
    ):
        assert expected in text, (expected, text)
    # Not on a loopback name: there is no other site to offer.
    elsewhere = startup_text(
        "http://10.0.0.5:5000", DemoPlatforms("http://10.0.0.5:5000", key), admin, "/data"
    )
    assert "another site" not in elsewhere and "localhost" not in elsewhere
    assert "http://10.0.0.5:5000/admin/" in elsewhere
