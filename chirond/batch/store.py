"""One module on purpose, though past 600 lines: `BatchStore` keeps the batch_* rows and their
in-memory mirror (open batches, per-(batch, model) queues, leases, per-user counts) in step under one
lock, each change one transaction paired with its in-memory update, and files, batches, lines and
result files all share that state (output files are files; deleting the input file of an open batch
cancels that batch in the same transaction, so its bytes can go at once). Split by table, that one
discipline would be spread over modules.

The durable store of the Files and Batches API: uploaded files, batches, and every batch line
with its result, in the batch_* tables of chirond.db (chirond.db owns the file and its schema; WAL,
synchronous=NORMAL: a kill -9 of the process loses no committed transaction; a power cut may lose
the last ones, as for any WAL database at NORMAL).

Exactly once by construction: a line is a row whose state goes 0 (queued) -> 1 (output) or 2
(error) once, in the transaction that stores its finished output/error line text; the output
and error files are those texts concatenated in line order. Leases live in memory only, so after
a crash every line still in state 0 is simply offered again.

In memory, for speed with a million queued lines: one _Queue per (batch, model) with the count
and tokens of its unleased queued lines (the backlog summary, rebuilt with one GROUP BY at open)
and a cursor into the table, so next_lines reads a few rows at a time in line order.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from chirond.batch.fair import DeficitRoundRobin
from chirond.batch.jsonl import LineError, check_line
from chirond.db import Database
from chirond.db import transaction as _tx

log = logging.getLogger(__name__)

FINAL_CHUNK = 5_000  # lines marked per transaction when a batch expires or is cancelled
FINISHING = ("finalizing", "cancelling")  # a target recorded, files still to write
IDX_BITS = 32  # a line's rowid is batch key << 32 | line index: one B-tree, appended in order
IDX_MASK = (1 << IDX_BITS) - 1
QUEUED, OUTPUT, ERROR = 0, 1, 2
FETCH = 256  # rows read from the table at a time per (batch, model) queue
INSERT_CHUNK = 20_000  # rows per validation transaction: short write locks for the runner
MAX_BATCH_ERRORS = 100  # line errors kept in a failed batch's `errors`
DELETED_CHECK = 1024  # validation looks this often (lines) whether its input file was deleted
INPUT_DELETED = "input_file_deleted"
ACTIVE = ("validating", "in_progress", "cancelling", "finalizing")

_BATCH_COLS = (
    "bkey, id, user, endpoint, input_file_id, completion_window, status, target, errors, metadata, total, "
    "completed, failed, output_file_id, error_file_id, created_at, expires_at, in_progress_at, finalizing_at, "
    "completed_at, failed_at, expired_at, cancelling_at, cancelled_at"
)
_TIMES = (
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


@dataclass(frozen=True)
class BatchLimits:
    max_file_bytes: int = 512 * 2**20
    max_file_lines: int = 1_000_000
    windows: tuple[str, ...] = ("1h", "6h", "24h", "72h", "7d")  # "24h" is always accepted
    file_ttl_s: float = 30 * 86400  # input and output files expire after this
    deadline_bucket_s: float = 300.0  # deadlines within one bucket count as equal (fair share)
    drr_quantum_tokens: int = 4096  # deficit round-robin quantum between users
    endpoints: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions")
    max_line_bytes: int = 4 * 2**20  # a line longer than a request body may be (api.max_body_bytes)


_WINDOW = re.compile(r"^([1-9][0-9]{0,5})([smhd])$")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def window_seconds(window: str) -> float:
    """ "90m", "24h", "7d" -> seconds; ValueError for anything else."""
    m = _WINDOW.match(window) if isinstance(window, str) else None
    if m is None:
        raise ValueError(f"completion window {window!r} is not a number followed by s, m, h or d (e.g. '24h')")
    return int(m.group(1)) * _UNIT[m.group(2)]


class StoreError(Exception):
    """An error the API returns as OpenAI's {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type


@dataclass(frozen=True, slots=True)
class Line:
    """One batch line leased to the runner."""

    batch_id: str
    idx: int
    custom_id: str
    user: str
    model: str
    url: str
    body: dict
    deadline: float  # epoch: batch created_at + window
    input_tokens: int  # estimate (chirond.tokens)


@dataclass(frozen=True, slots=True)
class LineResult:
    batch_id: str
    idx: int
    status_code: int  # upstream HTTP status; 0 when no response
    body: dict | None  # response body (200: the completion; 4xx: OpenAI error body)
    error: dict | None = None  # {"code", "message"} when there was no response


# ---------------------------------------------------------------- in-memory state


@dataclass(slots=True)
class _Batch:
    """A batch that is not final yet."""

    bkey: int
    id: str
    user: str
    endpoint: str
    deadline: float
    status: str
    target: str | None
    total: int
    done: int  # completed + failed
    leased: int = 0
    input_file_id: str = ""  # its lines are read from this file (off, len) when leased
    file_lines: int = 0  # lines of its input file: what it will queue, counted while it validates
    validated: bool = True  # its lines are rows; False from creation until validation ends (even if
    # it is cancelled meanwhile: a cancelled batch still reports every line, in its error file)
    input_deleted: bool = False  # cancelled because its input file was deleted (kept in `errors`)


_Row = tuple[int, str, int, bytes]  # rowid, custom_id, tokens, the line's bytes


@dataclass(slots=True)
class _Queue:
    """The unleased queued lines of one batch for one model."""

    batch: _Batch
    model: str
    bucket: int
    count: int  # unleased queued lines (the backlog summary)
    tokens: int
    cursor: int  # rowid of the last row read from the table
    end: int  # rowids of this batch are < end
    buf: deque[_Row] = field(default_factory=deque)  # read from the table, not leased
    back: list[tuple[int, _Row]] = field(default_factory=list)  # released lines: a heap on rowid

    def head(self, db: sqlite3.Connection, files_dir: Path) -> _Row | None:
        if self.back:
            return self.back[0][1]
        if not self.buf and self.count > 0:
            rows = db.execute(
                "SELECT rowid, custom_id, tokens, off, len FROM batch_lines WHERE rowid > ? AND rowid < ? "
                "AND state = 0 AND model = ? ORDER BY rowid LIMIT ?",
                (self.cursor, self.end, self.model, FETCH),
            ).fetchall()
            if rows:
                self.cursor = rows[-1][0]
                self.buf.extend(_read_lines(files_dir / self.batch.input_file_id, rows))
            else:  # the summary said more; trust the table
                log.error(
                    "batch %s model %s: %d queued lines expected, none found", self.batch.id, self.model, self.count
                )
                self.count = self.tokens = 0
        return self.buf[0] if self.buf else None

    def pop(self) -> _Row:
        row = heapq.heappop(self.back)[1] if self.back else self.buf.popleft()
        self.count -= 1
        self.tokens -= row[2]
        return row

    def push_back(self, row: _Row) -> None:
        heapq.heappush(self.back, (row[0], row))
        self.count += 1
        self.tokens += row[2]

    def discard(self, rowid: int, tokens: int) -> None:
        """A queued, unleased line got its result some other way: it leaves the queue."""
        self.back = [e for e in self.back if e[0] != rowid]
        heapq.heapify(self.back)
        self.buf = deque(r for r in self.buf if r[0] != rowid)
        self.count -= 1
        self.tokens -= tokens


# ---------------------------------------------------------------- helpers


def _read_lines(path: Path, rows: list[tuple[int, str, int, int, int]]) -> list[_Row]:
    """The lines' bytes from the input file: one read of the span they cover (lines of one model
    are mostly contiguous), else one read each. The file is there: deleting it cancels its batch
    (BatchStore.delete_file) under the lock this runs under."""
    lo, hi = rows[0][3], rows[-1][3] + rows[-1][4]
    with open(path, "rb") as f:  # no handle outlives the call: a deleted file's space is freed at once
        if hi - lo <= 8 * 2**20:
            f.seek(lo)
            span = f.read(hi - lo)
            return [(r[0], r[1], r[2], span[r[3] - lo : r[3] - lo + r[4]]) for r in rows]
        out = []
        for r in rows:
            f.seek(r[3])
            out.append((r[0], r[1], r[2], f.read(r[4])))
        return out


def _bounded_lines(f: BinaryIO, limit: int) -> Iterator[tuple[bytes | None, int]]:
    """(line, its length) for each line of `f`; (None, length) for a line over `limit` bytes,
    which is skipped a bounded chunk at a time instead of being read whole."""
    while raw := f.readline(limit + 1):
        if len(raw) <= limit or raw.endswith(b"\n"):  # whole: at most `limit` bytes before its newline
            yield raw, len(raw)
            continue
        size = len(raw)
        while not raw.endswith(b"\n") and (raw := f.readline(1 << 20)):
            size += len(raw)
        yield None, size


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _result_line(custom_id: str | None, response: dict | None, error: dict | None) -> str:
    return json.dumps(
        {"id": _new_id("batch_req_"), "custom_id": custom_id, "response": response, "error": error},
        separators=(",", ":"),
    )


def _error_of(r: LineResult) -> dict:
    if r.error is not None:
        return {"code": r.error.get("code"), "message": r.error.get("message")}
    err = r.body.get("error") if isinstance(r.body, dict) else None
    if isinstance(err, dict):
        return {"code": err.get("code") or err.get("type"), "message": err.get("message")}
    return {"code": "upstream_error", "message": f"the model server answered HTTP {r.status_code}"}


_DELETED_DOC = json.dumps({"object": "list", "data": [{
    "code": INPUT_DELETED, "param": "input_file_id", "line": None,
    "message": "the input file was deleted before the batch ended; lines not answered by then are in the error file",
}]})  # fmt: skip


def _says_deleted(errors: str | None) -> bool:
    """A batch's `errors` records that delete_file cancelled it."""
    return errors is not None and any(e.get("code") == INPUT_DELETED for e in json.loads(errors).get("data", []))


def _not_found(kind: str, ident: str, param: str = "id") -> StoreError:
    return StoreError(404, f"No such {kind} object: {ident}", None, param)


# ---------------------------------------------------------------- uploads


class Upload:
    """One file being uploaded: chunks go to a temp file in the files directory; commit fsyncs and
    renames it into place, then records it. Over a limit, write() aborts and raises 413."""

    def __init__(self, store: BatchStore) -> None:
        self._store = store
        self.tmp = store.files_dir / f".upload-{secrets.token_hex(8)}.tmp"
        self._f: BinaryIO | None = open(self.tmp, "wb")  # noqa: SIM115 (lives until commit/abort)
        self.bytes = 0
        self.newlines = 0
        self._last = b"\n"

    def write(self, chunk: bytes) -> None:
        if self._f is None:
            raise RuntimeError("upload already committed or aborted")
        limits = self._store.limits
        self.bytes += len(chunk)
        if self.bytes > limits.max_file_bytes:
            self.abort()
            raise StoreError(
                413,
                f"File is larger than the limit of {limits.max_file_bytes} bytes (batch.max_file_bytes).",
                "file_too_large",
                "file",
            )
        self.newlines += chunk.count(b"\n")
        if self.newlines > limits.max_file_lines:
            self.abort()
            raise StoreError(
                413,
                f"File has more than the limit of {limits.max_file_lines} lines (batch.max_file_lines).",
                "too_many_lines",
                "file",
            )
        if chunk:
            self._last = chunk[-1:]
        self._f.write(chunk)

    @property
    def lines(self) -> int:
        return self.newlines + (self._last != b"\n")

    def commit(self, user: str, filename: str, purpose: str) -> dict:
        if self._f is None:
            raise RuntimeError("upload already committed or aborted")
        if purpose != "batch":
            self.abort()
            raise StoreError(
                400, f"purpose {purpose!r} is not supported here; use 'batch'.", "invalid_purpose", "purpose"
            )
        if self.lines > self._store.limits.max_file_lines:
            self.abort()
            raise StoreError(
                413,
                f"File has more than the limit of {self._store.limits.max_file_lines} lines (batch.max_file_lines).",
                "too_many_lines",
                "file",
            )
        if self.bytes == 0:
            self.abort()
            raise StoreError(400, "The file is empty.", "empty_file", "file")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        file_id = _new_id("file-")
        path = self._store.files_dir / file_id
        os.replace(self.tmp, path)
        try:
            _fsync_dir(self._store.files_dir)
            return self._store._add_file(file_id, user, filename or "upload.jsonl", purpose, self.bytes, self.lines)
        except BaseException:  # not recorded (database full): its bytes must not hold space
            path.unlink(missing_ok=True)
            raise

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()  # no-op after commit


# ---------------------------------------------------------------- the store


class BatchStore:
    """The constructor does no I/O; `open()` brings chirond.db up to date (chirond.db.Database),
    opens the store's connection and loads the batches that are not final; `close()` closes it.
    One connection, shared under a lock by the event loop, the runner and the validation thread;
    validation and file writing open their own for the thread they run in."""

    def __init__(
        self,
        db: Database | Path,
        files_dir: Path,
        limits: BatchLimits,
        models: Collection[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.database = db if isinstance(db, Database) else Database(db)
        self.db_path = self.database.path
        self.files_dir = Path(files_dir)
        self.limits = limits
        self.models = frozenset(models)
        self.clock = clock
        self._lock = threading.RLock()  # the API, the runner and validation threads share this object
        self._tick_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None  # set by open()
        self._batches: dict[str, _Batch] = {}  # id -> batch not final yet
        self._queues: dict[str, dict[tuple[int, str], _Queue]] = {}  # model -> (bkey, model) -> queue
        self._leases: dict[tuple[int, int], tuple[_Queue, _Row]] = {}  # (bkey, rowid) -> where it came from
        self._drr: dict[tuple[str, int], DeficitRoundRobin] = {}  # (model, deadline bucket) -> state
        self._validating: set[str] = set()
        self._unfinished: dict[str, int] = {}  # user -> queued + leased lines of in_progress batches
        self._next_file_expiry = float("inf")  # when tick() next has a file to delete

    def open(self) -> None:
        """Migrates chirond.db if needed (chirond.db.SchemaError when it cannot be used), then loads
        the batches that are not final and sweeps the files directory. Again is a no-op."""
        with self._lock:
            if self._conn is not None:
                return
            self.database.open()
            self.files_dir.mkdir(parents=True, exist_ok=True)
            self._conn = self._connect()
            try:
                self._load()
                self._clean_files_dir()
            except BaseException:
                self._conn.close()
                self._conn = None
                raise

    def _connect(self) -> sqlite3.Connection:
        # Shared across threads under self._lock (the main one) or used by one thread (the others);
        # validation and the users store write the same file: a long busy timeout.
        return self.database.connect(busy_timeout_s=30.0, cache_kib=65536, check_same_thread=False)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("BatchStore.open() was not called")
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ------------------------------------------------------------ open / restore

    def _load(self) -> None:
        marks = ",".join("?" * len(ACTIVE))
        rows = self._db.execute(
            f"SELECT bkey, id, user, endpoint, expires_at, status, target, total, completed + failed, input_file_id, "
            f"in_progress_at, errors FROM batch_batches WHERE status IN ({marks}) ORDER BY bkey",
            ACTIVE,
        ).fetchall()
        sizes = dict(self._db.execute("SELECT id, lines FROM batch_files").fetchall())
        for bkey, bid, user, endpoint, deadline, status, target, total, done, fid, started, errors in rows:
            # Validation sets in_progress_at, also for a batch cancelled while it validated.
            validated = target is not None or (status != "validating" and (started is not None or total > 0))
            self._batches[bid] = _Batch(
                bkey, bid, user, endpoint, deadline, status, target, total, done, input_file_id=fid,
                file_lines=int(sizes.get(fid, 0)), validated=validated, input_deleted=_says_deleted(errors),
            )
        by_key = {b.bkey: b for b in self._batches.values() if b.status == "in_progress" and b.target is None}
        for bkey, model, n, tokens, first in self._db.execute(
            "SELECT bkey, model, count(*), sum(tokens), min(rowid) FROM batch_lines WHERE state = 0 "
            "GROUP BY bkey, model"
        ):
            b = by_key.get(bkey)
            if b is not None:
                self._add_queue(b, model, n, tokens, first - 1)
        nxt = self._db.execute("SELECT min(expires_at) FROM batch_files").fetchone()[0]
        self._next_file_expiry = float("inf") if nxt is None else nxt

    def _clean_files_dir(self) -> None:
        """Upload temp files and files no row names (a crash between rename and commit)."""
        known = {r[0] for r in self._db.execute("SELECT id FROM batch_files")}
        known.update(b.input_file_id for b in self._batches.values())
        for p in self.files_dir.iterdir():
            if p.is_file() and (p.name.startswith(".") or p.name not in known):
                p.unlink(missing_ok=True)

    def _add_queue(self, b: _Batch, model: str, n: int, tokens: int, cursor: int) -> None:
        bucket = int(b.deadline // self.limits.deadline_bucket_s)
        q = _Queue(b, model, bucket, n, tokens, cursor, (b.bkey + 1) << IDX_BITS)
        self._queues.setdefault(model, {})[(b.bkey, model)] = q
        self._unfinished[b.user] = self._unfinished.get(b.user, 0) + n

    def _drop_queues(self, b: _Batch, leases: bool) -> None:
        """b's queued lines leave the queue (and its leases, when `leases`)."""
        for model in list(self._queues):
            qs = self._queues[model]
            for key in [k for k in qs if k[0] == b.bkey]:
                q = qs.pop(key)
                self._unfinished[b.user] = self._unfinished.get(b.user, 0) - q.count
            if not qs:
                del self._queues[model]
        if leases:
            for lease in [k for k in self._leases if k[0] == b.bkey]:
                del self._leases[lease]
                self._unfinished[b.user] = self._unfinished.get(b.user, 0) - 1
            b.leased = 0
        if self._unfinished.get(b.user, 1) <= 0:
            self._unfinished.pop(b.user, None)

    # ------------------------------------------------------------ files

    def new_upload(self) -> Upload:
        return Upload(self)

    def _add_file(self, file_id: str, user: str, filename: str, purpose: str, nbytes: int, lines: int) -> dict:
        now = self.clock()
        row = (file_id, user, filename, purpose, nbytes, lines, now, now + self.limits.file_ttl_s)
        with self._lock:
            self._db.execute("INSERT INTO batch_files VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
            self._next_file_expiry = min(self._next_file_expiry, row[7])
        return self._file_dict(row)

    @staticmethod
    def _file_dict(r: tuple) -> dict:
        return {
            "id": r[0],
            "object": "file",
            "bytes": r[4],
            "created_at": int(r[6]),
            "expires_at": int(r[7]),
            "filename": r[2],
            "purpose": r[3],
            "status": "processed",
            "status_details": None,
        }

    def _file_row(self, user: str, file_id: str) -> tuple:
        row = self._db.execute("SELECT * FROM batch_files WHERE id = ?", (file_id,)).fetchone()
        if row is None or row[1] != user:
            raise _not_found("File", file_id)
        return tuple(row)

    def get_file(self, user: str, file_id: str) -> dict:
        with self._lock:
            return self._file_dict(self._file_row(user, file_id))

    def file_lines(self, user: str, file_id: str) -> int:
        """Lines in a file (for quota checks before create_batch)."""
        with self._lock:
            return int(self._file_row(user, file_id)[5])

    def file_path(self, user: str, file_id: str) -> Path:
        with self._lock:
            self._file_row(user, file_id)
        return self.files_dir / file_id

    def delete_file(self, user: str, file_id: str) -> dict:
        """The file goes at once, its space with it. A batch that still needs it (validating or in
        progress) is cancelled in the same transaction: lines already answered stay in its output,
        the others end in its error file as input_file_deleted, and its `errors` says why. The store
        holds no handle on an input file between calls, and validation notices the deletion within
        DELETED_CHECK lines and closes its own."""
        with self._lock:
            self._file_row(user, file_id)
            readers = [
                b for b in self._batches.values()
                if b.input_file_id == file_id and b.status in ("validating", "in_progress") and b.target is None
            ]  # fmt: skip
            # cancelled while it validated: it still reads the file, and now stops short of its end
            stopped = [
                b for b in self._batches.values()
                if b.input_file_id == file_id and b.status == "cancelling" and not b.validated and b.target is None
            ]  # fmt: skip
            now = self.clock()
            with _tx(self._db):
                self._db.execute("DELETE FROM batch_files WHERE id = ?", (file_id,))
                for b in readers:
                    self._db.execute(
                        "UPDATE batch_batches SET status = 'cancelling', cancelling_at = ?, errors = ? WHERE bkey = ?",
                        (now, _DELETED_DOC, b.bkey),
                    )
                for b in stopped:
                    self._db.execute("UPDATE batch_batches SET errors = ? WHERE bkey = ?", (_DELETED_DOC, b.bkey))
            for b in stopped:
                b.input_deleted = True
            for b in readers:
                b.status, b.input_deleted = "cancelling", True
                self._drop_queues(b, leases=False)  # running lines are aborted by the runner
                log.info("batch %s: its input file %s was deleted; cancelling it", b.id, file_id)
            (self.files_dir / file_id).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    def storage_bytes(self, user: str) -> int:
        """Bytes of the user's files (uploads and results), for the storage quota."""
        with self._lock:
            row = self._db.execute("SELECT coalesce(sum(bytes), 0) FROM batch_files WHERE user = ?", (user,))
            return int(row.fetchone()[0])

    def _in_use(self, file_id: str) -> bool:
        return any(b.input_file_id == file_id for b in self._batches.values())

    def list_files(self, user: str, purpose: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM batch_files WHERE user = ?", [user]
        if purpose is not None:
            sql, args = sql + " AND purpose = ?", [*args, purpose]
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created_at DESC, id", args).fetchall()
        return [self._file_dict(r) for r in rows]

    # ------------------------------------------------------------ batches

    def create_batch(
        self, user: str, input_file_id: str, endpoint: str, completion_window: str, metadata: dict | None
    ) -> dict:
        if endpoint not in self.limits.endpoints:
            raise StoreError(
                400,
                f"endpoint {endpoint!r} is not supported; use one of {', '.join(self.limits.endpoints)}.",
                "invalid_endpoint",
                "endpoint",
            )
        windows = {"24h", *self.limits.windows}
        if completion_window not in windows:
            raise StoreError(
                400,
                f"completion_window {completion_window!r} is not offered here; use one of "
                f"{', '.join(sorted(windows, key=window_seconds))}.",
                "invalid_completion_window",
                "completion_window",
            )
        if metadata is not None and (
            not isinstance(metadata, dict)
            or len(metadata) > 16
            or not all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
                for k, v in metadata.items()
            )
        ):
            raise StoreError(
                400,
                "metadata must be an object of at most 16 string keys (64 characters) and "
                "string values (512 characters).",
                "invalid_metadata",
                "metadata",
            )
        with self._lock:
            try:
                frow = self._file_row(user, input_file_id)
            except StoreError as e:
                e.param = "input_file_id"
                raise
            if frow[3] != "batch":
                raise StoreError(
                    400,
                    f"file {input_file_id} has purpose {frow[3]!r}, not 'batch'.",
                    "invalid_input_file",
                    "input_file_id",
                )
            now = self.clock()
            bid = _new_id("batch_")
            deadline = now + window_seconds(completion_window)
            cur = self._db.execute(
                "INSERT INTO batch_batches (id, user, endpoint, input_file_id, completion_window, status, metadata, "
                "created_at, expires_at) VALUES (?, ?, ?, ?, ?, 'validating', ?, ?, ?)",
                (
                    bid,
                    user,
                    endpoint,
                    input_file_id,
                    completion_window,
                    None if metadata is None else json.dumps(metadata),
                    now,
                    deadline,
                ),
            )
            assert cur.lastrowid is not None
            self._batches[bid] = _Batch(
                cur.lastrowid,
                bid,
                user,
                endpoint,
                deadline,
                "validating",
                None,
                0,
                0,
                input_file_id=input_file_id,
                file_lines=int(frow[5]),
                validated=False,
            )
            return self._batch_dict(self._batch_row(bid))

    def _batch_row(self, batch_id: str, user: str | None = None) -> tuple:
        row = self._db.execute(f"SELECT {_BATCH_COLS} FROM batch_batches WHERE id = ?", (batch_id,)).fetchone()
        if row is None or (user is not None and row[2] != user):
            raise _not_found("Batch", batch_id)
        return tuple(row)

    @staticmethod
    def _batch_dict(r: tuple) -> dict:
        d: dict[str, Any] = dict(zip(_BATCH_COLS.split(", "), r, strict=True))
        out: dict[str, Any] = {
            "id": d["id"],
            "object": "batch",
            "endpoint": d["endpoint"],
            "errors": json.loads(d["errors"]) if d["errors"] else None,
            "input_file_id": d["input_file_id"],
            "completion_window": d["completion_window"],
            "status": d["status"],
            "output_file_id": d["output_file_id"],
            "error_file_id": d["error_file_id"],
        }
        for k in _TIMES:
            out[k] = None if d[k] is None else int(d[k])
        out["request_counts"] = {"total": d["total"], "completed": d["completed"], "failed": d["failed"]}
        out["metadata"] = json.loads(d["metadata"]) if d["metadata"] else None
        return out

    def get_batch(self, user: str, batch_id: str) -> dict:
        with self._lock:
            return self._batch_dict(self._batch_row(batch_id, user))

    def list_batches(self, user: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        limit = max(1, min(int(limit), 100))
        with self._lock:
            top = 1 << 62
            if after is not None:
                row = self._db.execute(
                    "SELECT bkey FROM batch_batches WHERE id = ? AND user = ?", (after, user)
                ).fetchone()
                if row is None:
                    raise _not_found("Batch", after, "after")
                top = row[0]
            rows = self._db.execute(
                f"SELECT {_BATCH_COLS} FROM batch_batches WHERE user = ? AND bkey < ? ORDER BY bkey DESC LIMIT ?",
                (user, top, limit + 1),
            ).fetchall()
        return [self._batch_dict(r) for r in rows[:limit]], len(rows) > limit

    def pending_validation(self) -> list[str]:
        """Batches whose lines are not rows yet (also cancelled ones: their lines must be reported)."""
        with self._lock:
            return [b.id for b in self._batches.values() if not b.validated and b.id not in self._validating]

    def batch_status(self, batch_id: str) -> str:
        with self._lock:
            b = self._batches.get(batch_id)
            if b is not None:
                return b.status
            return str(self._batch_row(batch_id)[6])

    def cancel(self, user: str, batch_id: str) -> dict:
        with self._lock:
            row = self._batch_row(batch_id, user)
            b = self._batches.get(batch_id)
            status = row[6]
            if status in ("cancelling", "cancelled"):
                return self._batch_dict(row)
            if b is None or status not in ("validating", "in_progress") or b.target is not None:
                raise StoreError(409, f"Cannot cancel a batch with status '{status}'.", "invalid_state", None)
            self._db.execute(
                "UPDATE batch_batches SET status = 'cancelling', cancelling_at = ? WHERE bkey = ?",
                (self.clock(), b.bkey),
            )
            b.status = "cancelling"
            self._drop_queues(b, leases=False)  # leased lines may still be recorded or released
            return self._batch_dict(self._batch_row(batch_id))

    # ------------------------------------------------------------ validation

    def validate(self, batch_id: str) -> dict:
        """Reads the input file; every good line becomes a queued row, every bad one an error row.
        Runs in a thread with its own connection, committing every INSERT_CHUNK rows so the runner's
        writes wait at most one chunk; the batch stays "validating" until the end, and a batch found
        "validating" after a crash is validated again from scratch."""
        with self._lock:
            b = self._batches.get(batch_id)
            if b is None or b.validated or b.target is not None or batch_id in self._validating:
                return self._batch_dict(self._batch_row(batch_id))
            self._validating.add(batch_id)
            input_file_id = self._batch_row(batch_id)[4]
        try:
            return self._validate(b, input_file_id)
        finally:
            with self._lock:
                self._validating.discard(batch_id)

    def _validate(self, b: _Batch, input_file_id: str) -> dict:
        base = b.bkey << IDX_BITS
        db = self._connect()
        stats: dict[str, list[int]] = {}  # model -> [lines, tokens, first rowid]
        errors: list[dict] = []
        good = bad = 0
        try:
            with _tx(db):
                db.execute("DELETE FROM batch_lines WHERE rowid >= ? AND rowid < ?", (base, base + (1 << IDX_BITS)))
            path = self.files_dir / input_file_id
            try:
                f = open(path, "rb")  # noqa: SIM115
            except FileNotFoundError:
                f = None
            if f is not None:
                with f:
                    seen: set[str] = set()
                    rows: list[tuple] = []
                    idx = off = 0
                    limit = self.limits.max_line_bytes
                    for lineno, (raw, size) in enumerate(_bounded_lines(f, limit), 1):
                        if lineno % DELETED_CHECK == 0 and os.fstat(f.fileno()).st_nlink == 0:
                            break  # deleted (delete_file cancelled the batch): close it, free its space
                        at, off = off, off + size
                        if raw is not None and not raw.strip():
                            continue
                        rowid = base + idx
                        idx += 1
                        try:
                            if raw is None:  # never held whole: a 50 MB line must not cost 500 MB to refuse
                                raise LineError(
                                    "line_too_large",
                                    f"line {lineno}: {size} bytes, over this server's limit of {limit} bytes "
                                    "(api.max_body_bytes)",
                                )
                            cid, model, tokens = check_line(raw, lineno, b.endpoint, self.models)
                            if cid in seen:
                                raise LineError(
                                    "duplicate_custom_id",
                                    f"line {lineno}: custom_id {cid!r} appears more than once",
                                    cid,
                                )
                        except LineError as e:
                            bad += 1
                            if len(errors) < MAX_BATCH_ERRORS:
                                errors.append({"code": e.code, "message": e.message, "param": None, "line": lineno})
                            err = {"code": e.code, "message": e.message}
                            rows.append(
                                (
                                    rowid,
                                    b.bkey,
                                    ERROR,
                                    None,
                                    e.custom_id,
                                    0,
                                    at,
                                    size,
                                    _result_line(e.custom_id, None, err),
                                )
                            )
                        else:
                            seen.add(cid)
                            good += 1
                            s = stats.get(model)
                            if s is None:
                                stats[model] = [1, tokens, rowid]
                            else:
                                s[0] += 1
                                s[1] += tokens
                            rows.append((rowid, b.bkey, QUEUED, model, cid, tokens, at, size, None))
                        if len(rows) >= INSERT_CHUNK:
                            self._insert(db, rows)
                            rows = []
                    self._insert(db, rows)
        finally:
            db.close()
        with self._lock:
            now = self.clock()
            if f is None:
                errors = [
                    {
                        "code": "file_not_found",
                        "message": f"input file {input_file_id} no longer exists",
                        "param": "input_file_id",
                        "line": None,
                    }
                ]
            elif good + bad == 0:
                errors = [{"code": "empty_file", "message": "the input file has no lines", "param": None, "line": None}]
            failed = good == 0
            doc = json.dumps({"object": "list", "data": errors}) if failed else None
            if b.status == "validating":
                status = "failed" if failed else "in_progress"
                col = "failed_at" if failed else "in_progress_at"
                self._db.execute(
                    f"UPDATE batch_batches SET status = ?, {col} = ?, errors = ?, total = ?, failed = ?, "
                    "completed = 0 WHERE bkey = ?",
                    (status, now, doc, good + bad, bad, b.bkey),
                )
                b.status, b.total, b.done, b.validated = status, good + bad, bad, True
                if failed:
                    del self._batches[b.id]
                else:
                    for model, (n, tokens, first) in stats.items():
                        self._add_queue(b, model, n, tokens, first - 1)
            else:  # cancelled while validating: tick() turns its queued lines into cancelled errors
                self._db.execute(
                    "UPDATE batch_batches SET total = ?, failed = ?, completed = 0, in_progress_at = ? WHERE bkey = ?",
                    (good + bad, bad, now, b.bkey),
                )
                b.total, b.done, b.validated = good + bad, bad, True
            return self._batch_dict(self._batch_row(b.id))

    @staticmethod
    def _insert(db: sqlite3.Connection, rows: list[tuple]) -> None:
        if rows:
            with _tx(db):
                db.executemany("INSERT INTO batch_lines VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    # ------------------------------------------------------------ the runner's side

    def next_lines(self, model: str, n: int) -> list[Line]:
        """Up to n lines to run: earliest deadline bucket first; inside a bucket, deficit round-robin
        on input tokens between users; one user's lines in deadline, then batch, then line order."""
        out: list[Line] = []
        with self._lock:
            qs = self._queues.get(model)
            if not qs:
                return out
            buckets: dict[int, dict[str, list[_Queue]]] = {}
            for q in qs.values():
                if q.count > 0:
                    buckets.setdefault(q.bucket, {}).setdefault(q.batch.user, []).append(q)
            for bucket in sorted(buckets):
                users = buckets[bucket]
                for lst in users.values():
                    lst.sort(key=lambda q: (q.batch.deadline, q.batch.bkey))
                drr = self._drr.setdefault((model, bucket), DeficitRoundRobin(self.limits.drr_quantum_tokens))
                heads: dict[str, int] = {}
                for user in list(users):
                    head = self._head(users[user])
                    if head is None:
                        del users[user]
                    else:
                        heads[user] = head[2]
                while len(out) < n and heads:
                    who = drr.pick(heads)
                    assert who is not None
                    q = users[who][0]
                    out.append(self._lease(q, q.pop()))
                    head = self._head(users[who])
                    if head is None:
                        del heads[who]
                    else:
                        heads[who] = head[2]
                if not heads:
                    self._drr.pop((model, bucket), None)
                if len(out) >= n:
                    break
            for key in [k for k in self._drr if k[0] == model and k[1] not in buckets]:
                del self._drr[key]
        return out

    def _head(self, qs: list[_Queue]) -> _Row | None:
        """The next row of the first of one user's queues that has one (emptied queues drop off)."""
        while qs:
            row = qs[0].head(self._db, self.files_dir)
            if row is not None:
                return row
            qs.pop(0)
        return None

    def _lease(self, q: _Queue, row: _Row) -> Line:
        b = q.batch
        self._leases[(b.bkey, row[0])] = (q, row)
        b.leased += 1
        body = json.loads(row[3])["body"]
        return Line(b.id, row[0] & IDX_MASK, row[1], b.user, q.model, b.endpoint, body, b.deadline, row[2])

    def release(self, lines: Iterable[Line | LineResult]) -> None:
        """Leased but not run (or its result could not be recorded): back to the queue, ahead of
        later lines of the same batch."""
        with self._lock:
            for line in lines:
                b = self._batches.get(line.batch_id)
                if b is None:
                    continue
                lease = self._leases.pop((b.bkey, (b.bkey << IDX_BITS) | line.idx), None)
                if lease is None:
                    continue
                b.leased -= 1
                q, row = lease
                if (
                    b.status == "in_progress"
                    and b.target is None
                    and self._queues.get(q.model, {}).get((b.bkey, q.model)) is q
                ):
                    q.push_back(row)
                else:
                    self._unfinished[b.user] = self._unfinished.get(b.user, 0) - 1

    def record(self, results: Iterable[LineResult]) -> int:
        """Stores each result's finished output or error line in one transaction. A line already
        final is left alone, so a result recorded twice counts once."""
        with self._lock:
            done: list[tuple[_Batch, int, int]] = []  # batch, rowid, state
            counts: dict[int, list[int]] = {}
            with _tx(self._db):
                for r in results:
                    b = self._batches.get(r.batch_id)
                    if b is None:  # unknown or final: all its lines are final
                        continue
                    rowid = (b.bkey << IDX_BITS) | r.idx
                    lease = self._leases.get((b.bkey, rowid))
                    if lease is not None:
                        cid = lease[1][1]
                    else:
                        got = self._db.execute(
                            "SELECT custom_id, state FROM batch_lines WHERE rowid = ?", (rowid,)
                        ).fetchone()
                        if got is None or got[1] != QUEUED:
                            continue
                        cid = got[0]
                    if r.status_code == 200 and isinstance(r.body, dict):
                        resp = {
                            "status_code": 200,
                            "request_id": str(r.body.get("id") or _new_id("req_")),
                            "body": r.body,
                        }
                        state, text = OUTPUT, _result_line(cid, resp, None)
                    else:
                        resp_err = (
                            None
                            if r.status_code == 0
                            else {"status_code": r.status_code, "request_id": _new_id("req_"), "body": r.body}
                        )
                        state, text = ERROR, _result_line(cid, resp_err, _error_of(r))
                    cur = self._db.execute(
                        "UPDATE batch_lines SET state = ?, result = ? WHERE rowid = ? AND state = 0",
                        (state, text, rowid),
                    )
                    if cur.rowcount != 1:
                        continue
                    c = counts.setdefault(b.bkey, [0, 0])
                    c[state - 1] += 1
                    done.append((b, rowid, state))
                for bkey, (ok, failed) in counts.items():
                    self._db.execute(
                        "UPDATE batch_batches SET completed = completed + ?, failed = failed + ? WHERE bkey = ?",
                        (ok, failed, bkey),
                    )
            for b, rowid, _state in done:
                b.done += 1
                lease = self._leases.pop((b.bkey, rowid), None)
                if lease is not None:
                    b.leased -= 1
                else:
                    self._unqueue(b, rowid)
                    continue
                self._unfinished[b.user] = self._unfinished.get(b.user, 0) - 1
            return len(done)

    def _unqueue(self, b: _Batch, rowid: int) -> None:
        """A queued line recorded without a lease (not the runner's normal path)."""
        model, tokens = self._db.execute("SELECT model, tokens FROM batch_lines WHERE rowid = ?", (rowid,)).fetchone()
        q = self._queues.get(model, {}).get((b.bkey, model))
        if q is None:  # its batch left the queue (cancelling): already uncounted
            return
        if rowid <= q.cursor:  # read already: in the buffer or among released lines
            q.discard(rowid, tokens)
        else:  # not read yet: the state filter skips it; only the summary changes
            q.count -= 1
            q.tokens -= tokens
        self._unfinished[b.user] = self._unfinished.get(b.user, 0) - 1

    def backlog(self, model: str) -> list[tuple[float, int, int]]:
        """(deadline, queued unleased lines, their input tokens) per deadline, earliest first."""
        with self._lock:
            acc: dict[float, list[int]] = {}
            for q in self._queues.get(model, {}).values():
                if q.count > 0:
                    a = acc.setdefault(q.batch.deadline, [0, 0])
                    a[0] += q.count
                    a[1] += q.tokens
            return [(d, a[0], a[1]) for d, a in sorted(acc.items())]

    def queued_lines(self, user: str) -> int:
        """The user's lines that have no result yet: queued or leased lines of running batches, and
        every line of the batches still validating (they will be queued in a moment)."""
        with self._lock:
            batches = self._batches.values()
            validating = sum(b.file_lines for b in batches if b.user == user and b.status == "validating")
            return max(0, self._unfinished.get(user, 0)) + validating

    def leased_batches(self) -> set[str]:
        with self._lock:
            return {q.batch.id for q, _row in self._leases.values()}

    # ------------------------------------------------------------ housekeeping

    def tick(self) -> list[str]:
        """Expire, finish and cancel batches, write their files, delete expired files. Cheap when
        nothing is due: one pass over the batches that are not final."""
        if not self._tick_lock.acquire(blocking=False):
            return []
        try:
            changed: list[str] = []
            now = self.clock()
            due: list[tuple[_Batch, str]] = []
            with self._lock:
                for b in list(self._batches.values()):
                    if b.target is not None or b.id in self._validating:
                        continue
                    target = None
                    if b.status == "in_progress":
                        # Everything answered counts as completed even if the tick comes late.
                        if b.done >= b.total and b.leased == 0:
                            target = "completed"
                        elif now >= b.deadline:
                            target = "expired"
                    elif b.status == "cancelling" and b.leased == 0 and b.validated:
                        target = "cancelled"
                    elif b.status == "validating" and now >= b.deadline:
                        target = "expired"
                    if target is not None:
                        self._drop_queues(b, leases=True)  # its lines are offered no more, from now
                        b.target = target  # in memory only until _begin_final records it
                        due.append((b, target))
            for b, target in due:
                try:
                    self._begin_final(b, target, now)  # in chunks: the lock is free between them
                except (sqlite3.Error, OSError) as e:
                    # Disk full, read-only: the target was not recorded. Forget it in memory too, so
                    # the next tick chooses it again (its queues stay dropped: nothing is leased).
                    with self._lock:
                        if b.status not in FINISHING:
                            b.target = None
                    log.error("batch %s: could not mark it %s (%s); retrying", b.id, target, e)
            with self._lock:
                todo = [b for b in self._batches.values() if b.target is not None and b.status in FINISHING]
            for b in todo:
                try:
                    self._finish(b)  # writes files outside the lock: the lines of b no longer change
                except (sqlite3.Error, OSError) as e:  # retried next tick; other batches go on
                    log.error("batch %s: could not write its result files (%s); retrying", b.id, e)
                    continue
                changed.append(b.id)
            if now >= self._next_file_expiry:
                self._expire_files(now)
            return changed
        finally:
            self._tick_lock.release()

    def _begin_final(self, b: _Batch, target: str, now: float) -> None:
        """Unfinished lines become errors, in transactions of FINAL_CHUNK lines that each count
        theirs as failed (a crash in between leaves a consistent batch that the next tick finishes);
        then one transaction chooses the file ids and records the target status; _finish (also
        after a crash) writes the files and sets it."""
        code, msg = {
            "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
            "cancelled": ("batch_cancelled", "This request was not executed: the batch was cancelled."),
        }.get(target, ("", ""))
        if target == "cancelled" and b.input_deleted:
            code, msg = INPUT_DELETED, "This request was not executed: the batch's input file was deleted first."
        lo = b.bkey << IDX_BITS
        if code:
            with self._lock:
                last = self._db.execute(
                    "SELECT max(rowid) FROM batch_lines WHERE rowid >= ? AND rowid < ?", (lo, lo + (1 << IDX_BITS))
                ).fetchone()[0]
            start = lo
            while last is not None and start <= last:
                end = start + FINAL_CHUNK
                with self._lock, _tx(self._db):
                    n = self._db.execute(
                        "UPDATE batch_lines SET state = 2, result = json_object('id', 'batch_req_' || "
                        "lower(hex(randomblob(12))), 'custom_id', custom_id, 'response', NULL, 'error', "
                        "json_object('code', ?, 'message', ?)) WHERE rowid >= ? AND rowid < ? AND state = 0",
                        (code, msg, start, end),
                    ).rowcount
                    self._db.execute("UPDATE batch_batches SET failed = failed + ? WHERE bkey = ?", (n, b.bkey))
                start = end
                time.sleep(0.002)  # the lock is not fair: let a waiting caller in before the next chunk
        with self._lock, _tx(self._db):
            completed, failed = self._db.execute(
                "SELECT completed, failed FROM batch_batches WHERE bkey = ?", (b.bkey,)
            ).fetchone()
            out_id = _new_id("file-") if completed else None
            err_id = _new_id("file-") if failed else None
            status = "cancelling" if target == "cancelled" else "finalizing"
            self._db.execute(
                "UPDATE batch_batches SET total = max(total, completed + failed), status = ?, target = ?, "
                "output_file_id = ?, error_file_id = ?, finalizing_at = coalesce(finalizing_at, ?) WHERE bkey = ?",
                (status, target, out_id, err_id, now, b.bkey),
            )
            b.status, b.target, b.done = status, target, completed + failed
            b.total = max(b.total, b.done)

    def _finish(self, b: _Batch) -> None:
        row = self._batch_row(b.id)
        user, out_id, err_id = row[2], row[13], row[14]
        lo, hi = b.bkey << IDX_BITS, (b.bkey + 1) << IDX_BITS
        db = self._connect()
        try:
            sizes = self._write_results(db, lo, hi, out_id, err_id)
        finally:
            db.close()
        now = self.clock()
        with self._lock, _tx(self._db):
            for file_id, name, (nbytes, lines) in ((out_id, "output", sizes[0]), (err_id, "errors", sizes[1])):
                if file_id is not None:
                    self._db.execute("DELETE FROM batch_files WHERE id = ?", (file_id,))
                    self._add_file(file_id, user, f"{b.id}_{name}.jsonl", "batch_output", nbytes, lines)
            self._db.execute(
                f"UPDATE batch_batches SET status = ?, {b.target}_at = ?, target = NULL WHERE bkey = ?",
                (b.target, now, b.bkey),
            )
            self._batches.pop(b.id, None)
            b.status, b.target = str(b.target), None
            fid = b.input_file_id
            if (
                not self._in_use(fid)
                and self._db.execute("SELECT 1 FROM batch_files WHERE id = ?", (fid,)).fetchone() is None
            ):
                (self.files_dir / fid).unlink(missing_ok=True)  # expired (file_ttl_s) while the batch ran

    def _write_results(
        self, db: sqlite3.Connection, lo: int, hi: int, out_id: str | None, err_id: str | None
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        """Output and error files in line order: temp file, fsync, rename, fsync of the directory."""
        paths = [(self.files_dir / f".{i}.tmp", self.files_dir / i) if i else None for i in (out_id, err_id)]
        fs = [open(p[0], "wb") if p else None for p in paths]  # noqa: SIM115
        sizes = [[0, 0], [0, 0]]
        ok = False
        try:
            cur = db.execute(
                "SELECT state, result FROM batch_lines WHERE rowid >= ? AND rowid < ? ORDER BY rowid", (lo, hi)
            )
            while rows := cur.fetchmany(10_000):
                for state, text in rows:
                    k = 0 if state == OUTPUT else 1
                    f = fs[k]
                    if f is None:  # cannot happen: ids were chosen from the same counts
                        continue
                    data = text.encode() + b"\n"
                    f.write(data)
                    sizes[k][0] += len(data)
                    sizes[k][1] += 1
            for f in fs:
                if f is not None:
                    f.flush()
                    os.fsync(f.fileno())
            ok = True
        finally:
            for f in fs:
                if f is not None:
                    f.close()
            for p in paths:
                if p is not None and not ok:  # a partial temp file would hold space until a restart
                    p[0].unlink(missing_ok=True)
        for p in paths:
            if p is not None:
                os.replace(p[0], p[1])
        _fsync_dir(self.files_dir)
        return (sizes[0][0], sizes[0][1]), (sizes[1][0], sizes[1][1])

    def _expire_files(self, now: float) -> None:
        with self._lock:
            gone = [r[0] for r in self._db.execute("SELECT id FROM batch_files WHERE expires_at <= ?", (now,))]
            if gone:
                self._db.executemany("DELETE FROM batch_files WHERE id = ?", [(i,) for i in gone])
            nxt = self._db.execute("SELECT min(expires_at) FROM batch_files").fetchone()[0]
            self._next_file_expiry = float("inf") if nxt is None else nxt
            for i in gone:
                if not self._in_use(i):
                    (self.files_dir / i).unlink(missing_ok=True)
