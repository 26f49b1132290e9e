"""Every error movierec raises about TorchServe, and how TorchServe's error answers are read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import requests


class ServeError(RuntimeError):
    """A TorchServe instance could not be started, reached or stopped."""


class MovieRecError(Exception):
    """Base class for every error the API clients raise."""


class ConfigError(MovieRecError):
    """The client cannot be set up (missing key file, bad version string, ...)."""


class ServerUnreachable(MovieRecError):
    """The server did not answer, even after retries."""


class ServerError(MovieRecError):
    """The server answered with an error status; carries its message."""

    def __init__(self, status: int, message: str, body: Any = None, url: str = "") -> None:
        self.status = status
        self.message = message
        self.body = body
        self.url = url
        super().__init__(f"HTTP {status}: {message}")


class NotFound(ServerError):
    """HTTP 404: unknown model or version."""


class WorkerDied(ServerError):
    """TorchServe's own 500/507: the worker died (or ran out of memory) before answering; it restarts by itself.

    Safe to send again for idempotent calls. The handler's own 500/507 (body {"error": ...}) is not this.
    """


class NoWorker(ServerError):
    """TorchServe's own 503 for a version with no worker: a restart registers movierec-batch with 0 workers.

    A bulk job scales its registration up again (as it did at its start) and sends the request again.
    """


class AuthError(ServerError):
    """The token was refused even after re-reading the key file and rotating an expired key."""


def error_message(status: int, content: bytes) -> tuple[str, Any]:
    """Return the readable message and parsed body of an error response."""
    try:
        body = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        # Our handler answers {"error": ...}; TorchServe's frontend {"message": ...}.
        for key in ("error", "message", "Error"):
            if isinstance(body.get(key), str) and body[key]:
                return body[key], body
    text = content.decode("utf-8", "replace").strip()
    if len(text) > 500:
        text = text[:500] + "..."
    return text or f"HTTP {status} with an empty body", body


def is_worker_death(status: int, body: Any) -> bool:
    """Whether an error answer is TorchServe's own for a lost worker, not one our handler wrote.

    The frontend answers {"code", "type", "message"} (e.g. 500 "Worker died.", 507 when the worker
    ran out of memory); the handler answers {"error": ..., "model_version": ...} (model.protocol).
    """
    if status not in (500, 507) or not isinstance(body, dict):
        return False
    return {"code", "type", "message"} <= body.keys() and "error" not in body


def is_no_worker(status: int, body: Any) -> bool:
    """Whether an error answer is TorchServe's own 503 for a version that has no worker to run it."""
    if status != 503 or not isinstance(body, dict) or "error" in body:
        return False
    return "has no worker" in str(body.get("message", ""))


def raise_for_response(resp: requests.Response) -> None:
    """Raise the matching ServerError when a response is not 2xx."""
    if resp.status_code < 400:
        return
    message, body = error_message(resp.status_code, resp.content)
    cls = ServerError
    if resp.status_code == 404:
        cls = NotFound
    elif is_worker_death(resp.status_code, body):
        cls = WorkerDied
    elif is_no_worker(resp.status_code, body):
        cls = NoWorker
    raise cls(resp.status_code, message, body, resp.url)


def is_token_rejection(status: int, content: bytes) -> bool:
    """Tell a refused token (TorchServe answers 400) from a bad request."""
    if status != 400:
        return False
    message, body = error_message(status, content)
    kind = body.get("type", "") if isinstance(body, dict) else ""
    return kind == "InvalidKeyException" or message.startswith(("Token Authori", "Token Authenti"))
