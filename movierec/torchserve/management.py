"""TorchServe's management API (and /ping) with token auth, key renewal and retries.

The one place that scales, sets defaults and describes models, and the one place that renews keys:
TorchServe never renews an expired key by itself. Nothing registers or unregisters over the API:
the model API is off and `movierec-serve start`/`reload` register what the model store holds.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from movierec.defaults import ENV_INFERENCE_URL, ENV_KEY_FILE, ENV_MANAGEMENT_URL, archive_file
from movierec.defaults import INFERENCE_URL as DEFAULT_INFERENCE_URL
from movierec.defaults import KEY_FILE as DEFAULT_KEY_FILE
from movierec.defaults import MANAGEMENT_URL as DEFAULT_MANAGEMENT_URL
from movierec.defaults import MODEL as DEFAULT_MODEL
from movierec.torchserve.errors import (
    AuthError,
    ConfigError,
    MovieRecError,
    NoWorker,
    ServerUnreachable,
    WorkerDied,
    error_message,
    is_token_rejection,
    raise_for_response,
)

# Synchronous scaling waits for workers to load; don't give up before the server.
SLOW_CALL_TIMEOUT = 300.0
# How long a bulk job keeps resending a request while TorchServe restarts lost workers (its restart
# back-off grows 1, 1, 2, 3, 5, 8, 13 ... s after each failed start) or the frontend is restarted.
RECOVERY_S = 120.0
RECOVERY_DELAY_MAX_S = 8.0

# Versions end up in a file name and a URL path, so keep them to plain tokens.
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_JSON = {"Content-Type": "application/json"}
T = TypeVar("T")


def check_version(version: str) -> str:
    """Validate a model version string and return it."""
    if not _VERSION_RE.match(version) or ".." in version:
        raise ConfigError(f"bad model version {version!r}: use letters, digits, '.', '_' or '-'")
    return version


def archive_name(version: str) -> str:
    """File name of a version's archive in the server's model store."""
    return archive_file(check_version(version))


@dataclass(frozen=True)
class Endpoints:
    """Where the server listens and where its key file is."""

    inference_url: str
    management_url: str
    key_file: Path

    @classmethod
    def resolve(
        cls,
        inference_url: str | None = None,
        management_url: str | None = None,
        key_file: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Endpoints:
        """Pick each setting from the argument, then the environment, then the default."""
        env = os.environ if env is None else env
        return cls(
            inference_url=(inference_url or env.get(ENV_INFERENCE_URL) or DEFAULT_INFERENCE_URL).rstrip("/"),
            management_url=(management_url or env.get(ENV_MANAGEMENT_URL) or DEFAULT_MANAGEMENT_URL).rstrip("/"),
            key_file=Path(key_file or env.get(ENV_KEY_FILE) or DEFAULT_KEY_FILE),
        )


class KeyFile:
    """The tokens TorchServe writes to key_file.json; re-read on demand."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._keys: dict[str, str] | None = None

    def reload(self) -> None:
        """Forget the cached keys so the next lookup reads the file again."""
        with self._lock:
            self._keys = None

    def key(self, kind: str) -> str | None:
        """Return the 'inference', 'management' or 'API' key, or None without a key file."""
        with self._lock:
            if self._keys is None:
                self._keys = self._read()
            return self._keys.get(kind)

    def _read(self) -> dict[str, str]:
        """The keys in the file; none when there is no file."""
        # No file means the server may run with token auth off; a refusal then says so.
        if not self.path.exists():
            return {}
        try:
            data = orjson.loads(self.path.read_bytes())
            return {kind: entry["key"] for kind, entry in data.items() if isinstance(entry, dict) and "key" in entry}
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read key file {self.path}: {exc}") from exc


def _session(retries: int, backoff_factor: float, pool_size: int) -> requests.Session:
    """A session that retries 503s and refused or dropped connections with backoff."""
    # Predictions, scaling and set-default are idempotent, so POST/PUT retry too.
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        status_forcelist=(503,),
        allowed_methods=frozenset({"GET", "POST", "PUT", "DELETE"}),
        backoff_factor=backoff_factor,
        backoff_max=10.0,
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    adapter = HTTPAdapter(max_retries=retry, pool_connections=2, pool_maxsize=pool_size)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class RecoveryTimeout(ServerUnreachable):
    """Workers (or the server) did not come back within the recovery time; carries the last error."""


def recovering(
    call: Callable[[], T],
    patience_s: float = RECOVERY_S,
    sleep: Callable[[float], None] = time.sleep,
    revive: Callable[[], object] | None = None,
) -> T:
    """Run an idempotent request again while TorchServe recovers from lost workers or a restart.

    Only TorchServe's own worker-death answers (WorkerDied), its "has no worker" 503 (NoWorker) and
    dropped or refused connections are retried, with doubling waits, for at most patience_s in all.
    After a NoWorker, revive (a job's own scale-up) runs before the request is sent again: a restarted
    server registers the bulk model with 0 workers. Everything else raises at once.
    """
    deadline, delay = time.monotonic() + patience_s, 0.5
    while True:
        try:
            return call()
        except (WorkerDied, NoWorker, ServerUnreachable) as exc:
            if time.monotonic() + delay > deadline:
                raise RecoveryTimeout(f"{exc} (still failing after {patience_s:.0f} s of retries)") from exc
            if isinstance(exc, NoWorker) and revive is not None:
                try:
                    revive()
                except MovieRecError:
                    pass  # still coming back; a version that is gone shows in the next answer (404)
            sleep(delay)
            delay = min(2 * delay, RECOVERY_DELAY_MAX_S)


class ManagementClient:
    """Calls TorchServe's management API and /ping with token auth, key renewal and retries."""

    def __init__(
        self,
        inference_url: str | None = None,
        management_url: str | None = None,
        key_file: str | os.PathLike[str] | None = None,
        *,
        model: str = DEFAULT_MODEL,
        timeout: float = 60.0,
        retries: int = 5,
        backoff_factor: float = 0.3,
        pool_size: int = 16,
    ) -> None:
        self.endpoints = Endpoints.resolve(inference_url, management_url, key_file)
        self.keys = KeyFile(self.endpoints.key_file)
        self._rotation_lock = threading.Lock()
        self.model = model
        self.timeout = timeout
        self.session = _session(retries, backoff_factor, pool_size)

    def close(self) -> None:
        """Close the connection pools."""
        self.session.close()

    def __enter__(self) -> ManagementClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(
        self,
        method: str,
        api: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        session: requests.Session | None = None,
    ) -> requests.Response:
        """Send one call with the `api` key and return its 2xx answer; a refused key is re-read, then rotated."""
        base = self.endpoints.inference_url if api == "inference" else self.endpoints.management_url
        url, timeout = base + path, timeout or self.timeout
        session = session or self.session
        for attempt in (1, 2, 3):
            sent = dict(headers or {})
            token = self.keys.key(api)
            if token:
                sent["Authorization"] = f"Bearer {token}"
            try:
                resp = session.request(method, url, params=params, data=data, headers=sent, timeout=timeout)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                raise ServerUnreachable(f"cannot reach {base}: {exc}") from exc
            except requests.Timeout as exc:
                raise ServerUnreachable(f"{method} {url} timed out after {timeout}s") from exc
            if is_token_rejection(resp.status_code, resp.content):
                # Another process may have rotated the keys (the file changed): re-read it first.
                if attempt == 1:
                    self.keys.reload()
                    continue
                # Keys expire (token_expiration_min) and TorchServe does not renew them by itself:
                # rotate the key with the API key, once per expiry.
                if attempt == 2 and api in ("inference", "management") and self._rotate(api, token):
                    continue
            break
        if is_token_rejection(resp.status_code, resp.content):
            message, parsed = error_message(resp.status_code, resp.content)
            hint = f"{api} key from {self.keys.path}"
            if not self.keys.path.exists():
                hint = f"no key file at {self.keys.path}; pass --key-file or set {ENV_KEY_FILE}"
            raise AuthError(resp.status_code, f"{message} ({hint})", parsed, url)
        raise_for_response(resp)
        return resp

    def _request(
        self,
        method: str,
        api: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = None,
        session: requests.Session | None = None,
    ) -> Any:
        """Send a call with an optional JSON body and decode its JSON answer (None when empty)."""
        data = orjson.dumps(body) if body is not None else None
        headers = _JSON if data is not None else None
        resp = self.send(method, api, path, params=params, data=data, headers=headers, timeout=timeout, session=session)
        if not resp.content:
            return None
        try:
            return orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            return resp.text

    def _rotate(self, kind: str, stale: str | None) -> bool:
        """Ask TorchServe for a new `kind` key unless another thread already did; True if renewed."""
        with self._rotation_lock:
            self.keys.reload()
            if self.keys.key(kind) != stale:
                return True
            api_key = self.keys.key("API")
            if not api_key:
                return False
            resp = self.session.get(
                f"{self.endpoints.management_url}/token",
                params={"type": kind},
                headers={"Authorization": f"Bearer {api_key}"},
                timeout=self.timeout,
            )
            self.keys.reload()
            return resp.ok and self.keys.key(kind) != stale

    def ping(self) -> dict[str, Any]:
        """Health of the inference server."""
        return self._request("GET", "inference", "/ping")

    def list_models(self) -> list[dict[str, Any]]:
        """Registered models: [{"modelName", "modelUrl"}, ...]."""
        models: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            params = {"limit": 100, **({"next_page_token": token} if token else {})}
            page = self._request("GET", "management", "/models", params=params)
            models.extend(page.get("models", []))
            token = page.get("nextPageToken")
            if not token:
                return models

    def describe(self, model: str | None = None, version: str | None = "all") -> list[dict[str, Any]]:
        """Describe versions of a model; version=None describes the default version only."""
        path = f"/models/{model or self.model}"
        if version:
            path += "/all" if version == "all" else f"/{check_version(version)}"
        return self._request("GET", "management", path)

    def versions(self, model: str | None = None) -> list[str]:
        """Registered versions of a model, in the server's order."""
        return [entry["modelVersion"] for entry in self.describe(model, "all")]

    def default_version(self, model: str | None = None) -> str:
        """The version that unversioned /predictions/{model} calls reach."""
        return self.describe(model, None)[0]["modelVersion"]

    def scale(
        self,
        version: str,
        min_worker: int,
        max_worker: int | None = None,
        *,
        model: str | None = None,
    ) -> dict[str, Any]:
        """Set the worker count of one version and wait until it is reached."""
        path = f"/models/{model or self.model}/{check_version(version)}"
        params = {
            "min_worker": min_worker,
            "max_worker": max(min_worker, max_worker or min_worker),
            "synchronous": "true",
        }
        return self._request("PUT", "management", path, params=params, timeout=max(self.timeout, SLOW_CALL_TIMEOUT))

    def set_default(self, version: str, *, model: str | None = None) -> dict[str, Any]:
        """Make `version` the default of `model`."""
        path = f"/models/{model or self.model}/{check_version(version)}/set-default"
        return self._request("PUT", "management", path)
