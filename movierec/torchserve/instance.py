"""Start, stop and check a local TorchServe instance that serves movierec.

Each instance lives in its own RUN_DIR: rendered config, key_file.json, logs, snapshots, a private
temp dir and serve.json (what stop() and running() need), so several can run side by side.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from movierec.defaults import KEY_FILE_NAME, MODEL_STORE, RUN_DIR
from movierec.torchserve.config import (
    DEFAULT_CONFIG,
    HOST,
    Ports,
    latest_snapshot,
    parse_models,
    render_config,
    snapshot_models,
)
from movierec.torchserve.errors import MovieRecError, NotFound, ServeError
from movierec.torchserve.management import ManagementClient
from movierec.torchserve.processes import (
    PID_FILE,
    check_ports_free,
    instance_processes,
    is_frontend,
    log_tail,
    private_tmp_dir,
    terminate,
    torchserve_env,
)
from movierec.torchserve.processes import launch as run_launcher
from movierec.torchserve.properties import read_properties
from movierec.torchserve.registry import check_archive, plan_models, read_archive, snapshot_json, store_files
from movierec.torchserve.vetting import read_state, refusals, refuse, vet

STATE_FILE = "serve.json"
KEY_FILE = KEY_FILE_NAME
# What a poll of an instance that is still starting (or failing) may raise.
NOT_ANSWERING = (MovieRecError, KeyError, ValueError, TypeError)
# TorchServe retries a worker that fails to load for ever (1, 1, 2, 3, 5 ... s apart); after this many
# failures of one version's worker a start gives up at once, naming the exception.
LOAD_TRIES = 2
MODEL_LOG = "model_log.log"
_LOAD_FAILED = re.compile(r"\[\w+ *\] W-\d+-(\S+)-stdout MODEL_LOG - Failed to load model \S+, exception (.*)$")


@dataclass(frozen=True)
class Server:
    """A running TorchServe instance and how to reach it."""

    run_dir: Path
    pid: int
    ports: Ports
    model_store: Path

    @property
    def inference_url(self) -> str:
        """Base URL of the inference API."""
        return f"http://{HOST}:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        """Base URL of the management API."""
        return f"http://{HOST}:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        """Base URL of the Prometheus metrics endpoint."""
        return f"http://{HOST}:{self.ports.metrics}"

    @property
    def key_file(self) -> Path:
        """The key file TorchServe writes into its working directory."""
        return self.run_dir / KEY_FILE

    @property
    def logs(self) -> Path:
        """Where the instance writes its logs and snapshots."""
        return self.run_dir / "logs"

    def token(self, kind: str = "inference") -> str:
        """The current key of one kind: "inference", "management" or "API"."""
        keys = json.loads(self.key_file.read_text())
        return keys[kind]["key"]

    def auth(self, kind: str = "inference") -> dict[str, str]:
        """An Authorization header for the given key kind."""
        return {"Authorization": f"Bearer {self.token(kind)}"}

    def client(self, timeout: float = 10.0) -> ManagementClient:
        """A management client for this instance; it renews expired keys, but never retries (callers poll)."""
        return ManagementClient(self.inference_url, self.management_url, self.key_file, timeout=timeout, retries=0)

    def describe(self, model: str) -> list[dict[str, Any]]:
        """All registered versions of a model, as the management API describes them."""
        with self.client() as api:
            return api.describe(model)

    def models(self) -> list[str]:
        """Names of all registered models."""
        with self.client() as api:
            return [m["modelName"] for m in api.list_models()]


def start(
    run_dir: str | Path = RUN_DIR,
    model_store: str | Path = MODEL_STORE,
    models: list[str] | str | None = None,
    ports: Ports | None = None,
    config: str | Path = DEFAULT_CONFIG,
    timeout: float = 180,
) -> Server:
    """Start TorchServe in the background and wait until every model has a READY worker.

    It serves exactly what plan() returns: with models ("NAME=FILE.mar" entries) those archives,
    without every .mar in the store, keeping the defaults and worker counts of RUN_DIR's last snapshot.
    """
    run_dir, model_store = Path(run_dir).resolve(), Path(model_store).resolve()
    ports = ports or Ports()
    models = parse_models(models) if isinstance(models, str) else list(models or [])
    _check_can_start(run_dir, model_store, ports)
    planned = plan(run_dir, model_store, models)
    tmp_dir = private_tmp_dir(run_dir)
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (run_dir / KEY_FILE).unlink(missing_ok=True)
    rendered = render_config(config, run_dir, model_store, ports, snapshot_json(planned))
    args = ["--start", "--ts-config", str(rendered), "--model-store", str(model_store)]
    log_start = (logs / MODEL_LOG).stat().st_size if (logs / MODEL_LOG).exists() else 0
    server = launch(run_dir, args, torchserve_env(tmp_dir, logs), ports, model_store, Path(config).resolve())
    try:
        expected = {name: list(versions) for name, versions in planned.items()}
        wait_ready(server, expected, timeout, failed=lambda: load_failure(logs / MODEL_LOG, log_start, expected))
    except BaseException:
        stop(run_dir)
        raise
    return server


def _check_can_start(run_dir: Path, model_store: Path, ports: Ports) -> None:
    """Refuse to start over a live instance or on busy ports."""
    if not model_store.is_dir():
        raise ServeError(f"model store not found: {model_store}")
    if (live := running(run_dir)) is not None:
        raise ServeError(f"TorchServe already runs from {run_dir} (pid {live.pid}); stop it first")
    # A frontend killed with SIGKILL leaves its workers spinning; clear them first.
    stop(run_dir)
    check_ports_free(asdict(ports), HOST)


def plan(
    run_dir: Path, model_store: Path, models: list[str], strict: bool = False
) -> dict[str, dict[str, dict[str, Any]]]:
    """The registrations a start renders: model name -> version -> snapshot entry.

    Only archives that pass registry.check_archive get in, whatever models or the snapshot name, and
    of those only the ones vetting.vet accepts (loaded outside the server). A refused archive named
    in models, or any refused one when strict (a reload), is a ServeError naming it; otherwise the
    store's refused archives are left out (`movierec-serve status` lists them) and the rest served.
    """
    if models:
        entries = [entry.split("=", 1) if "=" in entry else [None, entry] for entry in models]
        files = [str(check_archive(model_store, file).name) for _, file in entries]
        if refused := vet(run_dir, model_store, files):
            raise ServeError(refused_line(refused))
        archives = [read_archive(model_store, file) for file in files]
        names = {file: name for name, file in entries if name}
        return plan_models(archives, names=names)
    snap_file = latest_snapshot(run_dir)
    snapshot = read_properties(snap_file).get("model_snapshot") if snap_file else None
    previous = snapshot_models(snapshot) if snapshot else {}
    files = store_files(model_store)
    refused = vet(run_dir, model_store, files)
    if refused and strict:
        raise ServeError(refused_line(refused))
    archives = [read_archive(model_store, file) for file in files if file not in refused]
    if not archives:
        what = f"only refused archives ({refused_line(refused)})" if refused else "no .mar files"
        raise ServeError(f"{what} in the model store {model_store}: build one (make mar) first")
    return plan_models(archives, previous)


def refused_line(refused: dict[str, str]) -> str:
    """One line naming each refused archive and why."""
    return "; ".join(f"refused {file}: {reason}" for file, reason in refused.items())


def launch(
    run_dir: Path, args: list[str], env: dict[str, str], ports: Ports, model_store: Path, config: Path | None = None
) -> Server:
    """Run `torchserve ARGS` from RUN_DIR and record the instance there for stop(), running() and reload()."""
    pid = run_launcher(run_dir, args, env)
    state = {"pid": pid, "pgid": os.getpgid(pid), "ports": asdict(ports)}
    state.update(model_store=str(model_store), tmp_dir=env["TMPDIR"], config=str(config or DEFAULT_CONFIG))
    (run_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    return Server(run_dir, pid, ports, model_store)


def reload(run_dir: str | Path = RUN_DIR, timeout: float = 180) -> Server:
    """Restart the instance in RUN_DIR on the same ports so it serves exactly the archives now in its store.

    New .mar files get registered, removed ones are gone; versions still there keep their default and
    worker counts (TorchServe's shutdown snapshot). In-flight requests fail; clients retry them.
    Each new or changed archive is first loaded outside the server (vetting.vet): a refused one is a
    ServeError and nothing stops. One that passes yet fails to load in TorchServe is refused after the
    restart, and the archives that served before are started again (then a ServeError names it).
    """
    run_dir = Path(run_dir).resolve()
    server, state = running(run_dir), _read_state(run_dir)
    if server is None or state is None:
        raise ServeError(f"TorchServe is not running from {run_dir}; use start")
    config = Path(state.get("config", DEFAULT_CONFIG))
    # Check the store, loading each new or changed archive outside the server, before stopping:
    # a bad archive never takes a serving instance down.
    before = read_state(run_dir)["accepted"]
    try:
        plan(run_dir, server.model_store, [], strict=True)
    except ServeError as error:
        raise ServeError(f"{error}; nothing was restarted, the serving versions go on (fix or remove it)") from None
    new = sorted(f for f, digest in read_state(run_dir)["accepted"].items() if before.get(f) != digest)
    stop(run_dir)
    try:
        return start(run_dir, server.model_store, None, server.ports, config, timeout)
    except ServeError as error:
        if not new:
            raise
        # Passed the checks yet TorchServe could not load it (a handler that fails at import, say):
        # refuse the new archives the error names (all new ones if it names none) and serve what served before.
        why = str(error).splitlines()[0]
        archives = {file: read_archive(server.model_store, file) for file in new}
        blamed = [file for file, a in archives.items() if f"{a.name} version {a.version}" in why] or new
        refuse(run_dir, blamed, why)
        start(run_dir, server.model_store, None, server.ports, config, timeout)
        refused = {r.file: r.reason for r in refusals(run_dir) if r.file in blamed}
        raise ServeError(f"{refused_line(refused)}; the versions that served before serve again") from None


def stop(run_dir: str | Path = RUN_DIR, timeout: float = 30) -> bool:
    """Stop the instance in RUN_DIR and its workers; True if something was running."""
    run_dir = Path(run_dir).resolve()
    state = _read_state(run_dir)
    if state is None:
        return False
    procs = terminate(state["pid"], state["pgid"], state["tmp_dir"], timeout)
    (run_dir / KEY_FILE).unlink(missing_ok=True)
    Path(state["tmp_dir"], PID_FILE).unlink(missing_ok=True)
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    return bool(procs)


def running(run_dir: str | Path = RUN_DIR) -> Server | None:
    """The live instance started from RUN_DIR, or None."""
    run_dir = Path(run_dir).resolve()
    state = _read_state(run_dir)
    if state is None or not is_frontend(state["pid"]):
        return None
    return Server(run_dir, state["pid"], Ports(**state["ports"]), Path(state["model_store"]))


def leftovers(run_dir: str | Path = RUN_DIR) -> int:
    """How many processes of a dead instance in RUN_DIR still run (stop() ends them)."""
    state = _read_state(Path(run_dir).resolve())
    return len(instance_processes(state["pid"], state["pgid"], state["tmp_dir"])) if state else 0


def _read_state(run_dir: Path) -> dict | None:
    """The state launch() left in RUN_DIR, or None."""
    try:
        return json.loads((run_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None


def load_failure(model_log: Path, offset: int, expected: dict[str, list[str]]) -> str:
    """Why an expected version's worker failed to load LOAD_TRIES times since `offset` of the model log, or ""."""
    try:
        with open(model_log, "rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    workers = {f"{name}_{version}": (name, version) for name, versions in expected.items() for version in versions}
    failures: dict[str, list[str]] = {}
    for line in lines:
        if (found := _LOAD_FAILED.search(line)) and found[1] in workers:
            failures.setdefault(found[1], []).append(found[2].strip())
            if len(failures[found[1]]) >= LOAD_TRIES:
                name, version = workers[found[1]]
                return f"TorchServe could not load {name} version {version} ({LOAD_TRIES} tries): {found[2].strip()}"
    return ""


def wait_ready(
    server: Server, expected: dict[str, list[str]], timeout: float = 180, failed: Callable[[], str] | None = None
) -> None:
    """Poll until the frontend answers and each expected model version has a READY worker.

    failed (a start's load_failure) says why waiting longer is pointless; then this gives up at once.
    """
    deadline = time.monotonic() + timeout
    waiting = "the key file"
    # On one shared port TorchServe routes GET /models/NAME/VERSION to the inference API (model
    # invocation), so only the default version can be described there, as the KServe wrapper does.
    default_only = server.ports.inference == server.ports.management
    with server.client() as api:
        while time.monotonic() < deadline:
            if not is_frontend(server.pid):
                raise ServeError(f"TorchServe exited during startup\n{log_tail(server.logs)}")
            try:
                waiting = not_ready(api, expected, default_only)
            except NOT_ANSWERING as error:
                waiting = f"the management API ({error})"
            if not waiting:
                return
            if failed is not None and (why := failed()):
                raise ServeError(f"{why}\n{log_tail(server.logs)}")
            time.sleep(0.5)
    raise ServeError(
        f"TorchServe not ready after {timeout:.0f} s, still waiting for {waiting}\n{log_tail(server.logs)}"
    )


def not_ready(api: ManagementClient, expected: dict[str, list[str]], default_only: bool = False) -> str:
    """What an instance still waits for, or "" when /ping answers and every expected version serves.

    A version whose minWorkers is 0 needs no worker; an empty version list means all versions
    (only the default one with default_only).
    """
    api.ping()
    for name, versions in expected.items():
        try:
            described = api.describe(name, None if default_only else "all")
        except NotFound:
            return f"model {name} to be registered"
        by_version = {d["modelVersion"]: d for d in described}
        if not by_version:
            return f"model {name} to be registered"
        for version in versions or list(by_version):
            info = by_version.get(version)
            if info is None:
                return f"model {name} version {version} to be registered"
            if info.get("minWorkers", 1) == 0:
                continue
            if not any(w.get("status") == "READY" for w in info.get("workers", [])):
                return f"a READY worker for {name} version {version}"
    return ""


def health(run_dir: str | Path = RUN_DIR) -> str:
    """Why the instance in RUN_DIR cannot serve, or "" when it can.

    Healthy means: the frontend runs, /ping answers Healthy with the inference key (renewed if it
    expired: TorchServe 0.12 wants a key even there), and every registered version that should
    have workers has a READY one. This is the check for an exec liveness/readiness probe.
    """
    server = running(run_dir)
    if server is None:
        return f"TorchServe is not running from {Path(run_dir).resolve()}"
    try:
        with server.client() as api:
            ping = api.ping()
            if not isinstance(ping, dict) or ping.get("status") != "Healthy":
                return f"/ping answered {ping!r}"
            waiting = not_ready(api, {m["modelName"]: [] for m in api.list_models()})
    except NOT_ANSWERING as error:
        return f"TorchServe does not answer properly: {error}"
    return f"waiting for {waiting}" if waiting else ""
