"""Answering an APIError from a pure ASGI middleware, before FastAPI (and its exception handlers)
runs: in the route's API shape, OpenAI's or Anthropic's."""

from __future__ import annotations

import json
from collections.abc import Iterable

from router import errors


async def send_error(send, scope, error: errors.APIError, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    status, shaped = error.shaped(errors.route_path(scope))
    body = json.dumps(shaped).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
