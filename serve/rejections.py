"""Rejecting bad input: one exception type, its JSON response, and the request body size limit."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.monitoring import REJECTED

# Room for the multipart boundaries and part headers around an upload of the maximum size.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


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


async def handle_validation_error(request: Request, error: Exception) -> Response:
    """FastAPI's own 422 (missing field, wrong type), counted as a rejection."""
    assert isinstance(error, RequestValidationError)
    REJECTED.labels("invalid_request").inc()
    return await request_validation_exception_handler(request, error)


def too_large(limit: int, what: str = "request body") -> InputRejected:
    return InputRejected(413, "too_large", f"{what} is larger than the limit of {limit} bytes")


class UploadLimit:
    """Refuse request bodies over ``limit(scope)`` bytes before they are spooled.

    A declared Content-Length over the limit is refused without reading the body; the bytes that
    actually arrive are counted too, which covers chunked uploads and a lying Content-Length.
    """

    def __init__(self, app: ASGIApp, limit: Callable[[Scope], int | None]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit(scope) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await rejection_response(too_large(limit))(scope, receive, send)
            return
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException passes through form parsing to the app's exception handler.
                    raise too_large(limit)
            return message

        await self.app(scope, capped_receive, send)
