"""The daemon's log lines: plain, under journald (no timestamp, `<N>` priorities on every line), JSON."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

from chirond.log_output import JsonFormatter, TextFormatter, configure, priority, under_journald


def _record(level: int, msg: str, fields: dict[str, object] | None = None, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            info = sys.exc_info()
    r = logging.LogRecord("chirond.x", level, __file__, 1, msg, None, info)
    if fields is not None:
        r.fields = fields
    return r


def test_priorities_follow_syslog() -> None:
    assert [priority(lv) for lv in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)] \
        == [7, 6, 4, 3, 2]


def test_text_on_a_terminal_has_a_timestamp_and_no_priority() -> None:
    line = TextFormatter(journald=False).format(_record(logging.WARNING, "hello"))
    assert not line.startswith("<") and line.split(" ", 2)[2].startswith("WARNING chirond.x: hello")
    assert line[:4].isdigit()  # the year


def test_text_under_journald_has_priorities_on_every_line_and_no_timestamp() -> None:
    f = TextFormatter(journald=True)
    assert f.format(_record(logging.INFO, "tick")) == "<6>INFO chirond.x: tick"
    lines = f.format(_record(logging.ERROR, "failed", exc=True)).split("\n")
    assert len(lines) > 2 and all(x.startswith("<3>") for x in lines) and "ValueError: boom" in lines[-1]


def test_fields_are_appended_quoted_when_needed() -> None:
    line = TextFormatter(journald=True).format(
        _record(logging.INFO, "POST /v1 200", {"request_id": "r1", "ttft_s": 0.12345, "user": "a b", "inst": None}))
    assert line == '<6>INFO chirond.x: POST /v1 200 request_id=r1 ttft_s=0.123 user="a b" inst=-'


def test_json_is_one_object_per_line_with_the_fields() -> None:
    out = JsonFormatter(journald=False).format(_record(logging.WARNING, "slow", {"request_id": "r2", "e2e_s": 1.5}))
    obj = json.loads(out)
    assert obj["level"] == "warning" and obj["msg"] == "slow" and obj["request_id"] == "r2" and obj["e2e_s"] == 1.5
    assert obj["ts"].endswith("Z")
    under = JsonFormatter(journald=True).format(_record(logging.DEBUG, "x"))
    assert under.startswith("<7>{") and json.loads(under[3:])["msg"] == "x"


def test_journald_is_detected_only_for_the_stream_it_names(tmp_path: Path) -> None:
    with open(tmp_path / "err", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert under_journald(stream, env)
        assert not under_journald(other, env)  # inherited by a child that writes elsewhere
        assert not under_journald(stream, {})
        assert not under_journald(stream, {"JOURNAL_STREAM": "garbage"})
        assert not under_journald(io.StringIO(), env)


def test_configure_writes_through_one_handler(monkeypatch: object) -> None:
    buf = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure("warning", "json", buf)
        logging.getLogger("chirond.t").info("hidden")
        logging.getLogger("chirond.t").warning("shown")
        assert [json.loads(x)["msg"] for x in buf.getvalue().splitlines()] == ["shown"]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
