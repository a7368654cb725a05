"""Refuse a request body far larger than any prompt the context cap can hold, before reading it.

A declared Content-Length over the limit is answered 413 at once; a body sent without one is
counted as it arrives and refused once past the limit. The limit is `max_body_bytes` in the
config (default 4 MiB: a 40 960-token prompt of JSON-escaped CJK text is under 1 MiB).
"""

from __future__ import annotations

from starlette.exceptions import HTTPException

from router import errors
from router.http.asgi_errors import send_error


class _TooLarge(HTTPException):
    """Raised from `receive`: FastAPI, reading the body itself, turns any other exception there
    into a 400, but passes an HTTPException on (the ingress answers it as 413 request_too_large)."""

    def __init__(self, limit: int):
        super().__init__(413, too_large(limit, None).message)


def too_large(limit: int, size: int | None) -> errors.APIError:
    got = f"{size} bytes" if size is not None else "more"
    return errors.APIError(413, f"The request body ({got}) exceeds the limit of {limit} bytes: no prompt that "
                           "size fits the 40 960-token context.", code="request_too_large")


class BodyLimitMiddleware:
    """Pure ASGI. The limit is read from `app.state.max_body_bytes` (None: no limit)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        app = scope.get("app")
        limit = getattr(app.state, "max_body_bytes", None) if scope["type"] == "http" and app is not None else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await send_error(send, scope, too_large(limit, int(declared)))
            return
        received = 0
        started = False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await send_error(send, scope, too_large(limit, None))
