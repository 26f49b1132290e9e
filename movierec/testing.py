"""A local stand-in for TorchServe's context, to run the handler without a server (tests, GPU check)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

JSON_REQUEST = {"Content-Type": "application/json"}


class LocalContext:
    """The parts of ts.context.Context the handler uses, recording each request's status and content type.

    Each request's headers are `request_headers[idx]`, or a JSON Content-Type when none are given.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        gpu_id: int | None = None,
        version: str = "1.0",
        model_yaml_config: dict[str, Any] | None = None,
        batch_size: int = 32,
        request_headers: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": gpu_id, "batch_size": batch_size}
        self.manifest = {"model": {"modelName": "movierec", "modelVersion": version}}
        self.model_yaml_config = model_yaml_config or {}
        self.request_headers = request_headers
        self.statuses: dict[int, tuple[int, str]] = {}
        self.content_types: dict[int, str] = {}
        self.headers: dict[int, dict[str, str]] = {}

    def get_all_request_header(self, idx: int) -> dict[str, Any]:
        """Request idx's headers as TorchServe 0.12 passes them (names as sent)."""
        return dict(JSON_REQUEST if self.request_headers is None else self.request_headers[idx])

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        """Record the status TorchServe would send for request idx."""
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        """Record the content type TorchServe would send for request idx."""
        self.content_types[idx] = value

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        """Record a response header TorchServe would send for request idx."""
        self.headers.setdefault(idx, {})[key] = value

    def status(self, idx: int) -> int:
        """The HTTP status of request idx: 200 unless the handler set another."""
        return self.statuses.get(idx, (200, "OK"))[0]
