"""How the daemon writes its log: plain text on a terminal; under systemd's journal (JOURNAL_STREAM
names our stderr) no timestamp, since journald adds its own, and an `<N>` syslog priority prefix on
every line, so `journalctl -p warning` filters; or one JSON object per line (`log_format = "json"`)
for log shippers. Fields passed as `extra={"fields": {...}}` (the access log) are appended as
`key=value` in text and as keys in JSON."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")

# syslog(3) priorities, as sd-daemon(3) prefixes them
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return _PRIORITY[logging.DEBUG]


def under_journald(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """True when `stream` is the journal stream systemd gave us: JOURNAL_STREAM is "DEV:INODE" of it
    (systemd.exec(5)); a child that inherited the variable but writes elsewhere is not."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    f = getattr(record, "fields", None)
    return f if isinstance(f, dict) else {}


def _show(v: Any) -> str:
    s = "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
    return json.dumps(s) if (not s or any(c.isspace() or c in '"=' for c in s)) else s


class TextFormatter(logging.Formatter):
    def __init__(self, journald: bool) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s" if journald else
                         "%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={_show(v)}" for k, v in fields.items())
        if self.journald:  # every line of a traceback gets the prefix, or journald files it as info
            p = f"<{priority(record.levelno)}>"
            line = "\n".join(p + part for part in line.split("\n"))
        return line


class JsonFormatter(logging.Formatter):
    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        line = json.dumps(out, ensure_ascii=False, default=str)
        return f"<{priority(record.levelno)}>{line}" if self.journald else line


def configure(level: str, fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Replace the root logger's handlers with one writing to `stream` (stderr) in `fmt`."""
    stream = stream or sys.stderr
    journald = under_journald(stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(journald) if fmt == "json" else TextFormatter(journald))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
