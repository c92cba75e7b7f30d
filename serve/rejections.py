"""Rejecting bad input: one exception type, its JSON response, the request body's size and time
limits, the uploads' Content-Type and their one file part, and what Starlette's body parsing
answers (malformed multipart, a client gone mid-upload)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from python_multipart.multipart import parse_options_header
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.monitoring import REJECTED
from serve.settings import env_name

# Room for the multipart boundaries and part headers around an upload of the maximum size.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
UPLOAD_LIMIT_VARIABLE = env_name("max_upload_bytes")
UPLOAD_TIMEOUT_VARIABLE = env_name("upload_timeout_s")
# nginx's status for a client that hung up before its answer; never sent, only counted and logged.
CLIENT_CLOSED_REQUEST = 499


class InputRejected(HTTPException):
    """A 4xx for bad input; ``reason`` labels the rejection in the metrics."""

    def __init__(self, status_code: int, reason: str, detail: str) -> None:
        super().__init__(status_code=status_code, detail=detail)
        self.reason = reason


def rejection_response(error: InputRejected) -> JSONResponse:
    """Count the rejection and answer ``{"detail": ...}``."""
    REJECTED.labels(error.reason).inc()
    return JSONResponse({"detail": error.detail}, status_code=error.status_code)


async def handle_input_rejected(request: Request, error: Exception) -> Response:
    assert isinstance(error, InputRejected)
    return rejection_response(error)


# FastAPI's messages for the upload field, and what they mean for the client who got them.
FILE_FIELD_MESSAGES = {
    "value_error": "the field 'file' must be a file part with a filename (curl -F 'file=@photo.jpg'), "
                   "not a plain form field",
    "missing": "Field required: no complete multipart part named 'file' (none was sent, or the body "
               "ended before its closing boundary)",
}


async def handle_http_error(request: Request, error: Exception) -> Response:
    """Starlette's and FastAPI's own HTTP errors, as FastAPI answers them, with two exceptions. A
    400 from parsing the body (malformed multipart: no boundary, a part without a name, too many
    fields...) is a rejected input, counted as ``malformed_body``. A client that hung up before its
    body was complete is not: FastAPI makes that a 400 too, which would count a client's hang-up as
    the service refusing it; it is a 499 (in the metrics and uvicorn's access log; nobody is there
    to receive it). Routing's 404 and 405, and the 503 before startup, pass unchanged."""
    assert isinstance(error, HTTPException)
    if error.status_code == 400:
        if isinstance(error.__cause__, ClientDisconnect):
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        REJECTED.labels("malformed_body").inc()
    return await http_exception_handler(request, error)


async def handle_validation_error(request: Request, error: Exception) -> Response:
    """FastAPI's own 422 (missing field, wrong type), counted as a rejection. A body field's ``input``
    is not echoed back (it can be a whole upload: a 1 MB file sent as a plain field came back as 2 MB
    of JSON), and the upload field's messages say what to send instead."""
    assert isinstance(error, RequestValidationError)
    REJECTED.labels("invalid_request").inc()
    problems = []
    for problem in error.errors():
        if tuple(problem.get("loc", ()))[:1] == ("body",):
            problem = {key: value for key, value in problem.items() if key != "input"}
            if tuple(problem["loc"]) == ("body", "file") and problem.get("type") in FILE_FIELD_MESSAGES:
                problem["msg"] = FILE_FIELD_MESSAGES[problem["type"]]
        problems.append(problem)
    return await request_validation_exception_handler(request, RequestValidationError(problems, body=None))


def file_too_large(upload_limit: int) -> InputRejected:
    """413 for an uploaded file over the upload limit."""
    return InputRejected(413, "too_large", f"uploaded file is larger than the limit of {upload_limit} bytes")


def body_too_large(upload_limit: int) -> InputRejected:
    """413 for a request body over the upload limit plus the multipart framing allowed around it."""
    return InputRejected(413, "too_large", f"request body is larger than the limit of {upload_limit} bytes "
                                           f"({UPLOAD_LIMIT_VARIABLE}) plus {MULTIPART_OVERHEAD_BYTES} "
                                           f"bytes of multipart framing")


async def require_multipart(request: Request) -> None:
    """400 unless the request is multipart/form-data (as Starlette's form parser reads the header),
    422 when it holds more than one part named ``file``.

    Without the first, an image sent as the raw body, or JSON, would get FastAPI's 422 for a missing
    field, which hides what went wrong; a multipart body without the field still gets that 422.
    Without the second, FastAPI would take the last of several files and drop the others unseen.
    ``async`` so that it runs on the event loop: FastAPI runs a plain ``def`` dependency in its
    thread pool, a thread hop per upload (at 224 px, concurrency 16 on the Zen 5 EPYC: 236-246
    requests/s against 261-271).
    """
    content_type = request.headers.get("content-type")
    media_type, _options = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        got = f"Content-Type {content_type[:100]}" if content_type else "no Content-Type"
        raise InputRejected(400, "not_multipart", f"send the image as multipart/form-data in a field "
                                                  f"named 'file' (got {got})")
    files = len((await request.form()).getlist("file"))  # the form FastAPI has already parsed
    if files > 1:
        raise InputRejected(422, "several_files", f"send one image per request, in one part named 'file' "
                                                  f"(got {files} parts named 'file')")


def upload_too_slow(timeout_s: float) -> InputRejected:
    """408 for a request body still arriving ``timeout_s`` after its headers. Its connection closes,
    as for every answer sent before the body has all arrived (:class:`UploadLimit`)."""
    return InputRejected(408, "upload_timeout",
                         f"the request body did not arrive within {timeout_s:g} s "
                         f"({UPLOAD_TIMEOUT_VARIABLE})")


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int  # FLOWERLAB_MAX_UPLOAD_BYTES
    timeout_s: float  # FLOWERLAB_UPLOAD_TIMEOUT_S


class UploadLimit:
    """Refuse request bodies over ``limits(scope).max_bytes`` (FLOWERLAB_MAX_UPLOAD_BYTES) plus
    :data:`MULTIPART_OVERHEAD_BYTES` before they are spooled, and bodies not in whole
    ``limits(scope).timeout_s`` (FLOWERLAB_UPLOAD_TIMEOUT_S) after the request's headers.

    A declared Content-Length over the limit is refused without reading the body; the bytes that
    actually arrive are counted too, which covers chunked uploads and a lying Content-Length. The
    deadline covers every read until the body's last part, so a client that trickles its upload (or
    declares more than it sends) gets a 408 and its connection closed instead of holding it, and the
    spooled part, for ever. A response that starts before the body has all arrived (any early
    refusal: not multipart, malformed, too large) closes the connection too, since uvicorn would
    otherwise go on reading and discarding the rest of the body with no deadline at all.
    ``limits`` returns None before startup: nothing is limited then.
    """

    def __init__(self, app: ASGIApp, limits: Callable[[Scope], UploadLimits | None]) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = self.limits(scope) if scope["type"] == "http" else None
        if limits is None:
            await self.app(scope, receive, send)
            return
        limit = limits.max_bytes + MULTIPART_OVERHEAD_BYTES
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        received = 0
        # A body is coming unless the request says it has none; with no body, nothing to wait for.
        body_done = b"transfer-encoding" not in headers and (not declared.isdigit() or int(declared) == 0)
        deadline = asyncio.get_running_loop().time() + limits.timeout_s

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not body_done:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        if declared.isdigit() and int(declared) > limit:
            await rejection_response(body_too_large(limits.max_bytes))(scope, receive, closing_send)
            return

        async def capped_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # e.g. waiting for the client to disconnect: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):  # no task per read, unlike wait_for
                    message = await receive()
            except TimeoutError:
                # An HTTPException passes through form parsing to the app's exception handler.
                raise upload_too_slow(limits.timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise body_too_large(limits.max_bytes)
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, capped_receive, closing_send)
