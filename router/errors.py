"""The errors a request can meet, as values in OpenAI's vocabulary: {"error": {"message", "type",
"param", "code"}} with an HTTP status, or Anthropic's shape on its routes. No FastAPI: the HTTP
edge (router/http/) renders them."""

from __future__ import annotations

from router.wire.anthropic.errors import anthropic_status
from router.wire.anthropic.errors import error_body as anthropic_error_body


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None,
                 limit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}
        self.limit = limit  # the quota limit that refused (for traces), if any

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def shaped(self, path: str) -> tuple[int, dict]:
        """In the shape of the route's API: Anthropic's under /v1/messages, OpenAI's elsewhere."""
        if is_anthropic_path(path):
            return anthropic_status(self.status), anthropic_error_body(self.status, self.message)
        return self.status, self.body()


ANTHROPIC_PREFIX = "/v1/messages"


def is_anthropic_path(path: str) -> bool:
    return path == ANTHROPIC_PREFIX or path.startswith(ANTHROPIC_PREFIX + "/")


def route_path(scope) -> str:
    """The path within the app (Serve mounts an application under its route prefix)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def unauthorized() -> APIError:
    return APIError(401, "Incorrect or missing API key. Pass it as 'Authorization: Bearer <key>'.",
                    type="authentication_error", code="invalid_api_key")


def model_not_found(model: str) -> APIError:
    return APIError(404, f"The model '{model}' does not exist.", param="model", code="model_not_found")


def context_length_exceeded(message: str) -> APIError:
    return APIError(400, message, param="messages", code="context_length_exceeded")


def validation_error(errors: list[dict]) -> APIError:
    """First pydantic/FastAPI validation error, phrased for a client."""
    if not errors:
        return APIError(400, "Invalid request body.")
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "json_invalid":
        return APIError(400, "We could not parse the JSON body of your request.", code="invalid_json")
    param = ".".join(loc) or None
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    return APIError(400, f"Invalid value for '{param}': {msg}." if param else f"Invalid request body: {msg}.",
                    param=param, code="invalid_value" if param else "invalid_request")


def server_error(request_id: str) -> APIError:
    return APIError(500, f"The server had an error while processing your request (request id {request_id}).",
                    type="server_error", code="internal_error")


def unavailable(message: str) -> APIError:
    return APIError(503, message, type="server_error", code="service_unavailable")
