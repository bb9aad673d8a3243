"""The OpenAI Files and Batches HTTP routes (aiohttp), over the durable `BatchStore`.

Uploads are streamed part by part into the store (a 500 MB file never sits in memory); downloads are
streamed from disk. Every problem is an OpenAI-shaped `ApiError` (the app's error middleware answers
it); another user's file or batch is a 404, as if it did not exist. This module does not run lines:
`on_batch_created` hands a new batch to the runner, which validates it in a thread and executes it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web

from chirond import jsonbounds
from chirond.batch.store import BatchStore, StoreError
from chirond.serve.http_errors import storage_error
from chirond.serve.openai_api import ApiError

log = logging.getLogger(__name__)

Json = dict[str, Any]

_CHUNK = 256 * 1024  # multipart read size: big enough to be cheap, small enough to bound memory
_MAX_FIELD_BYTES = 1024  # a form field other than the file (purpose)
_MAX_CREATE_BYTES = 64 * 1024  # a batch-create JSON body (metadata included)
_SLACK_BYTES = 1 << 20  # multipart framing on top of the file itself, for the Content-Length check
# OpenAI's metadata limits: 16 pairs, keys up to 64 characters, values up to 512.
_META_PAIRS, _META_KEY, _META_VALUE = 16, 64, 512


def api_error(e: StoreError) -> ApiError:
    return ApiError(e.status, e.message, e.type, e.param, e.code)


@contextmanager
def _store_errors() -> Iterator[None]:
    try:
        yield
    except StoreError as e:
        raise api_error(e) from e


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        v = low - 1
    if not low <= v <= high:
        raise ApiError.invalid(name, f"'{name}' must be an integer from {low} to {high}, not {raw!r}.")
    return v


def _check_metadata(meta: object) -> dict[str, str] | None:
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise ApiError.invalid("metadata", "'metadata' must be an object of string keys and string values.")
    if len(meta) > _META_PAIRS:
        raise ApiError.invalid("metadata", f"'metadata' holds at most {_META_PAIRS} pairs, not {len(meta)}.")
    for k, v in meta.items():
        if not isinstance(v, str) or len(k) > _META_KEY or len(v) > _META_VALUE:
            raise ApiError.invalid(
                "metadata",
                f"'metadata' values must be strings; keys up to {_META_KEY} characters, values up to "
                f"{_META_VALUE} (bad key {k[:80]!r}).",
            )
    return meta


class BatchApi:
    def __init__(
        self,
        store: BatchStore,
        auth: Callable[[web.Request], str],
        on_batch_created: Callable[[str], None],
        check_lines_quota: Callable[[str, int], str | None] | None = None,
        storage_quota: Callable[[str], tuple[int, str]] | None = None,
        write_timeout_s: float = 30.0,
    ) -> None:
        """`write_timeout_s`: a download the client stops reading is cut off after this long without
        progress (api.body_timeout_s), so it cannot hold a file open, nor a deleted file's space."""
        self.write_timeout_s = write_timeout_s
        self.storage_quota = storage_quota  # user -> (bytes allowed, its config key); 0 = unlimited
        self.store = store
        self.auth = auth
        self.on_batch_created = on_batch_created
        self.check_lines_quota = check_lines_quota

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/files", self.upload_file)
        r.add_get("/v1/files", self.list_files)
        r.add_get("/v1/files/{id}", self.get_file)
        r.add_get("/v1/files/{id}/content", self.file_content)
        r.add_delete("/v1/files/{id}", self.delete_file)
        r.add_post("/v1/batches", self.create_batch)
        r.add_get("/v1/batches", self.list_batches)
        r.add_get("/v1/batches/{id}", self.get_batch)
        r.add_post("/v1/batches/{id}/cancel", self.cancel_batch)

    # ---------------------------------------------------------------- files

    async def upload_file(self, request: web.Request) -> web.Response:
        user = self.auth(request)
        limit = self.store.limits.max_file_bytes
        if not request.content_type.startswith("multipart/"):
            raise ApiError(
                415,
                f"Upload a file as multipart/form-data with the fields 'purpose' and 'file', "
                f"not {request.content_type or '(no Content-Type)'!r}.",
                code="unsupported_media_type",
            )
        if request.content_length is not None and request.content_length > limit + _SLACK_BYTES:
            raise ApiError(
                413,
                f"File is larger than the limit of {limit} bytes (batch.max_file_bytes).",
                param="file",
                code="file_too_large",
            )
        room = self._storage_room(user)
        if room is not None and request.content_length is not None and request.content_length > room[0] + _SLACK_BYTES:
            raise self._over_storage(user, room)
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError) as e:  # a malformed boundary
            raise ApiError.invalid("file", f"Malformed multipart body: {e}") from e
        purpose: str | None = None
        upload = None
        filename = "upload.jsonl"
        try:
            for _ in range(64):  # a form has a few parts; more is garbage
                part = await reader.next()
                if part is None:
                    break
                if isinstance(part, MultipartReader):
                    raise ApiError.invalid("file", "Nested multipart bodies are not supported.")
                if part.name == "purpose":
                    purpose = await self._field(part)
                    if purpose != "batch":
                        raise self._bad_purpose(purpose)
                elif part.name == "file":
                    if upload is not None:
                        raise ApiError.invalid("file", "Send one 'file' part per upload.")
                    filename = part.filename or filename
                    upload = self.store.new_upload()
                    with _store_errors():
                        while chunk := await part.read_chunk(_CHUNK):
                            upload.write(chunk)
                            if room is not None and upload.bytes > room[0]:
                                raise self._over_storage(user, room)  # `finally` below removes the part
                else:
                    await self._field(part)  # small unknown fields (expires_after, ...) are ignored
            else:
                raise ApiError.invalid("file", "Too many parts in the multipart body.")
            if upload is None:
                raise ApiError.missing("file", "the JSONL file to upload, as a multipart file part")
            if purpose is None:
                raise ApiError.missing("purpose", 'the intended use of the file: "batch"')
            with _store_errors():
                # commit fsyncs the file: off the event loop, as a big file takes a while
                obj = await asyncio.to_thread(upload.commit, user, filename, purpose)
            upload = None
            return web.json_response(obj)
        except ValueError as e:  # aiohttp's multipart parser on a malformed body
            raise ApiError.invalid("file", f"Malformed multipart body: {e}") from e
        except (OSError, sqlite3.Error) as e:  # disk full, read-only: the server's fault, and nothing was kept
            raise storage_error(e) from e
        finally:
            if upload is not None:
                upload.abort()

    def _storage_room(self, user: str) -> tuple[int, str] | None:
        """(bytes the user may still store, the quota's key), or None when unlimited."""
        if self.storage_quota is None:
            return None
        limit, key = self.storage_quota(user)
        return None if limit <= 0 else (max(0, limit - self.store.storage_bytes(user)), key)

    def _over_storage(self, user: str, room: tuple[int, str]) -> ApiError:
        return ApiError(
            429,
            f"user {user}: this file does not fit in the storage quota ({room[1]}); {room[0]} bytes are left. "
            "Delete files you no longer need (DELETE /v1/files/ID).",
            code="quota_exceeded",
        )

    @staticmethod
    async def _field(part: BodyPartReader) -> str:
        data = b""
        while chunk := await part.read_chunk(_MAX_FIELD_BYTES + 1):
            data += chunk
            if len(data) > _MAX_FIELD_BYTES:
                raise ApiError.invalid(part.name or "field", f"Form field {part.name!r} is too long.")
        try:
            return data.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise ApiError.invalid(part.name or "field", f"Form field {part.name!r} is not UTF-8.") from e

    @staticmethod
    def _bad_purpose(purpose: str) -> ApiError:
        return ApiError.invalid("purpose", f'This server accepts files with purpose "batch" only, not {purpose!r}.')

    async def list_files(self, request: web.Request) -> web.Response:
        user = self.auth(request)
        limit = _int_query(request, "limit", 10000, 1, 10000)
        order = request.query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError.invalid("order", f"'order' must be 'asc' or 'desc', not {order!r}.")
        with _store_errors():
            files = self.store.list_files(user, request.query.get("purpose") or None)
        if order == "asc":
            files.reverse()  # the store lists newest first
        after = request.query.get("after")
        if after:
            ids = [f["id"] for f in files]
            files = files[ids.index(after) + 1 :] if after in ids else []
        page = files[:limit]
        return web.json_response(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(files) > limit,
            }
        )

    async def get_file(self, request: web.Request) -> web.Response:
        user = self.auth(request)
        with _store_errors():
            return web.json_response(self.store.get_file(user, request.match_info["id"]))

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        user = self.auth(request)
        with _store_errors():
            obj = self.store.get_file(user, request.match_info["id"])
            path = self.store.file_path(user, obj["id"])
        try:
            f = path.open("rb")  # opened now, so a delete racing the download cannot cut it short
        except FileNotFoundError as e:
            raise ApiError(404, f"No such File object: {obj['id']}", code="file_not_found") from e
        with f:
            size = path.stat().st_size
            resp = web.StreamResponse(
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Disposition": f'attachment; filename="{_safe_name(obj.get("filename"))}"',
                }
            )
            resp.content_length = size
            await resp.prepare(request)
            for _ in range(size // _CHUNK + 2):  # bounded by the size; +1 for the final empty read
                chunk = await asyncio.to_thread(f.read, _CHUNK)
                if not chunk:
                    break
                try:
                    await asyncio.wait_for(resp.write(chunk), self.write_timeout_s)
                except TimeoutError:
                    log.info("download of %s stalled for %g s: connection closed", obj["id"], self.write_timeout_s)
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
            await resp.write_eof()
        return resp

    async def delete_file(self, request: web.Request) -> web.Response:
        user = self.auth(request)
        with _store_errors():
            return web.json_response(self.store.delete_file(user, request.match_info["id"]))

    # ---------------------------------------------------------------- batches

    async def create_batch(self, request: web.Request) -> web.Response:
        user = self.auth(request)
        body = await self._json_object(request)
        fields: dict[str, str] = {}
        for name, what in (
            ("input_file_id", "the id of an uploaded file with purpose 'batch'"),
            ("endpoint", "'/v1/chat/completions' or '/v1/completions'"),
            ("completion_window", "e.g. '24h'"),
        ):
            v = body.get(name)
            if v is None:
                raise ApiError.missing(name, what)
            if not isinstance(v, str) or not v:
                raise ApiError.invalid(name, f"'{name}' must be a non-empty string ({what}).")
            fields[name] = v
        metadata = _check_metadata(body.get("metadata"))
        if self.check_lines_quota is not None:
            with _store_errors():
                lines = self.store.file_lines(user, fields["input_file_id"])  # 404 for another user's
            problem = self.check_lines_quota(user, lines)
            if problem:
                raise ApiError(429, problem, code="quota_exceeded")
        with _store_errors():
            batch = self.store.create_batch(
                user, fields["input_file_id"], fields["endpoint"], fields["completion_window"], metadata
            )
        self.on_batch_created(batch["id"])
        return web.json_response(batch)

    @staticmethod
    async def _json_object(request: web.Request) -> Json:
        ctype = request.content_type  # aiohttp's default without the header: application/octet-stream
        if "Content-Type" in request.headers and ctype != "application/json" and not ctype.endswith("+json"):
            raise ApiError.unsupported_media_type(request.headers.get("Content-Type"))
        if request.content_length is not None and request.content_length > _MAX_CREATE_BYTES:
            raise ApiError.too_large(_MAX_CREATE_BYTES, request.content_length)
        parts: list[bytes] = []
        size = 0
        while chunk := await request.content.read(_MAX_CREATE_BYTES + 1):  # ends by EOF or by the limit
            size += len(chunk)
            if size > _MAX_CREATE_BYTES:
                raise ApiError.too_large(_MAX_CREATE_BYTES)
            parts.append(chunk)
        raw = b"".join(parts)
        try:
            body = jsonbounds.loads(raw)
        except ValueError as e:  # UnicodeDecodeError, too deep, lone surrogates: all ValueErrors
            raise ApiError.bad_json(str(e)) from e
        if not isinstance(body, dict):
            raise ApiError.bad_json(f"expected a JSON object, got {type(body).__name__}")
        return body

    async def get_batch(self, request: web.Request) -> web.Response:
        user = self.auth(request)
        with _store_errors():
            return web.json_response(self.store.get_batch(user, request.match_info["id"]))

    async def list_batches(self, request: web.Request) -> web.Response:
        user = self.auth(request)
        limit = _int_query(request, "limit", 20, 1, 100)
        with _store_errors():
            page, more = self.store.list_batches(user, request.query.get("after") or None, limit)
        return web.json_response(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": more,
            }
        )

    async def cancel_batch(self, request: web.Request) -> web.Response:
        user = self.auth(request)
        with _store_errors():
            return web.json_response(self.store.cancel(user, request.match_info["id"]))


def _safe_name(name: object) -> str:
    s = name if isinstance(name, str) and name else "file.jsonl"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in s)[:200]
