"""Typed HTTP client for the movierec TorchServe inference and management APIs.

Management calls, key renewal, errors and retries come from movierec.torchserve.management;
this module adds the movierec inference calls on top.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from model.protocol import DEFAULT_TOP_K
from movierec.torchserve.errors import (
    AuthError,
    ConfigError,
    MovieRecError,
    NotFound,
    ServerError,
    ServerUnreachable,
    WorkerDied,
    error_message,
    is_token_rejection,
    is_worker_death,
)
from movierec.torchserve.management import (
    DEFAULT_MODEL,
    Endpoints,
    KeyFile,
    ManagementClient,
    RecoveryTimeout,
    archive_name,
    check_version,
    recovering,
)

# Re-exported: the client's callers take the errors and the management helpers from here.
__all__ = [
    "DEFAULT_MODEL",
    "AuthError",
    "ConfigError",
    "Endpoints",
    "KeyFile",
    "MovieRecClient",
    "MovieRecError",
    "NotFound",
    "RecoveryTimeout",
    "ServerError",
    "ServerUnreachable",
    "WorkerDied",
    "archive_name",
    "check_version",
    "error_message",
    "is_token_rejection",
    "is_worker_death",
    "recovering",
]


class MovieRecClient(ManagementClient):
    """Calls the movierec inference and management APIs with token auth and retries."""

    def __enter__(self) -> MovieRecClient:
        return self

    def infer(self, body: Mapping[str, Any], *, model: str | None = None, version: str | None = None) -> Any:
        """POST a raw JSON body to /predictions/{model}[/{version}]."""
        path = f"/predictions/{model or self.model}"
        if version:
            path += f"/{check_version(version)}"
        return self._request("POST", "inference", path, body=body)

    def predict(
        self, user_id: int | str, movie_id: int | str, *, model: str | None = None, version: str | None = None
    ) -> dict[str, Any]:
        """Predict one rating: {"user_id", "movie_id", "rating", "model_version"}."""
        return self.infer({"user_id": user_id, "movie_id": movie_id}, model=model, version=version)

    def predict_many(
        self, instances: Iterable[Mapping[str, Any]], *, model: str | None = None, version: str | None = None
    ) -> dict[str, Any]:
        """Predict many pairs in one request: {"predictions": [...], "model_version"}."""
        return self.infer({"instances": list(instances)}, model=model, version=version)

    def recommend(
        self,
        user_id: int | str,
        top_k: int = DEFAULT_TOP_K,
        *,
        exclude_rated: bool = True,
        model: str | None = None,
        version: str | None = None,
    ) -> dict[str, Any]:
        """Top-k movies for a user: {"user_id", "recommendations": [...], "model_version"}."""
        body = {"user_id": user_id, "top_k": top_k, "exclude_rated": exclude_rated}
        return self.infer(body, model=model, version=version)

    def recommend_many(
        self,
        users: Iterable[int | str],
        top_k: int = DEFAULT_TOP_K,
        *,
        exclude_rated: bool = True,
        model: str | None = None,
        version: str | None = None,
    ) -> dict[str, Any]:
        """Top-k movies for many users in one request (at most the archive's max_users):
        {"recommendations": [{"user_id", "recommendations": [...]} or {"user_id", "error"}, ...], "model_version"}."""
        body = {"users": list(users), "top_k": top_k, "exclude_rated": exclude_rated}
        return self.infer(body, model=model, version=version)
