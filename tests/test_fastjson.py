"""``fastjson``: the consumer's payloads mean the same to PostgreSQL as the standard library's
JSON, and what orjson refuses still encodes (through ``json``), as it did before."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import text

from lti_tool import fastjson
from lti_tool.db import Database

PAYLOADS = [
    [{"a": 1, "b": None, "c": 'x"y\\z', "d": 0.25, "e": True, "f": [1, 2]}],
    [{"body": json.dumps({"k": "é ü \u2028 \\u0000"}), "note": "NUL as text: \\u0000"}],
    {"nested": {"1": {"2": [3, {"4": 5}]}}},
    [{"at": dt.datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=dt.UTC)}],
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_same_data_as_the_standard_library(payload: object) -> None:
    def as_iso(v: object) -> str:
        assert isinstance(v, dt.datetime)
        return v.isoformat()

    assert json.loads(fastjson.dumps(payload)) == json.loads(json.dumps(payload, default=as_iso))
    assert fastjson.loads(fastjson.dumps(payload)) == json.loads(fastjson.dumps(payload))


def test_datetimes_are_utc_instants_and_naive_ones_are_taken_as_utc() -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    aware = dt.datetime(2026, 3, 1, 11, 0, tzinfo=paris)
    naive = dt.datetime(2026, 3, 1, 10, 0)
    [a, n] = json.loads(fastjson.dumps([aware, naive]))
    assert dt.datetime.fromisoformat(a) == aware
    assert dt.datetime.fromisoformat(n) == naive.replace(tzinfo=dt.UTC)


def test_what_orjson_refuses_falls_back_instead_of_failing() -> None:
    lone = "half a pair: \ud800"
    assert json.loads(fastjson.dumps({"s": lone})) == {"s": lone}
    huge = 2**70
    assert json.loads(fastjson.dumps([huge])) == [huge]
    assert fastjson.loads('{"s": "\\ud800"}') == {"s": "\ud800"}
    with pytest.raises(TypeError):
        fastjson.dumps({"x": object()})


def test_postgresql_reads_the_rows_it_is_given(database: Database) -> None:
    rows = [
        {"n": 1, "t": 'a"b', "at": dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC)},
        {"n": 2, "t": None, "at": dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)},
    ]
    with database.engine.connect() as conn:
        got = conn.execute(
            text(
                "SELECT n, t, at FROM jsonb_to_recordset(CAST(:rows AS jsonb)) "
                "AS x(n integer, t text, at timestamptz) ORDER BY n"
            ),
            {"rows": fastjson.dumps(rows)},
        ).all()
    assert [tuple(r) for r in got] == [(1, 'a"b', rows[0]["at"]), (2, None, rows[1]["at"])]
