"""Start, stop and inspect a local TorchServe instance that serves movierec.

`python serve.py start|stop|status --help` for the command line; `start`, `stop`, `running`
and `free_ports` for tests and tools. Each instance lives in its own RUN_DIR: rendered config,
key_file.json, logs, snapshots and a private temp dir, so several can run side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from movierec.client.api import is_token_rejection
from movierec.paths import CONFIG_PROPERTIES

DEFAULT_CONFIG = CONFIG_PROPERTIES
HOST = "127.0.0.1"
STATE_FILE = "serve.json"
KEY_FILE = "key_file.json"
JAVA_MAIN = "org.pytorch.serve.ModelServer"
LOG4J_FLAG = "-Dlog4j.configurationFile="
# Worker sockets are TMPDIR/.ts.sock.<port>; AF_UNIX paths must stay under 108 bytes.
MAX_TMPDIR_LEN = 90


class ServeError(RuntimeError):
    """A TorchServe instance could not be started, reached or stopped."""


@dataclass(frozen=True)
class Ports:
    """The five loopback ports one TorchServe instance listens on."""

    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071

    @classmethod
    def free(cls) -> Ports:
        """Five currently free loopback ports, for tests running side by side."""
        return cls(*free_ports(5))


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

    def token(self, kind: str = "inference") -> str:
        """The current key of one kind: "inference", "management" or "API"."""
        keys = json.loads(self.key_file.read_text())
        return keys[kind]["key"]

    def auth(self, kind: str = "inference") -> dict[str, str]:
        """An Authorization header for the given key kind."""
        return {"Authorization": f"Bearer {self.token(kind)}"}

    def renew(self, kind: str) -> None:
        """Have TorchServe issue a new `kind` key; it never renews an expired one by itself."""
        url = f"{self.management_url}/token?type={kind}"
        with urllib.request.urlopen(urllib.request.Request(url, headers=self.auth("API")), timeout=10):
            pass

    def get_json(self, url: str, kind: str) -> object:
        """GET a URL with a `kind` key and decode its JSON; an expired key is renewed once."""
        try:
            return _get_json(url, self.auth(kind))
        except urllib.error.HTTPError as error:
            # Startup on a slow machine can outlast a short token_expiration_min.
            if not is_token_rejection(error.code, error.read()):
                raise
        self.renew(kind)
        return _get_json(url, self.auth(kind))

    def describe(self, model: str) -> list[dict]:
        """All registered versions of a model, as the management API describes them."""
        return self.get_json(f"{self.management_url}/models/{model}/all", "management")

    def models(self) -> list[str]:
        """Names of all registered models."""
        listing = self.get_json(f"{self.management_url}/models?limit=1000", "management")
        return [m["modelName"] for m in listing["models"]]


def free_ports(n: int) -> list[int]:
    """Return n distinct loopback ports that are free right now."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# --- config.properties: java.util.Properties syntax ------------------------------------------


def read_properties(path: Path) -> dict[str, str]:
    """Parse a Java properties file the way TorchServe's ConfigManager reads it."""
    props: dict[str, str] = {}
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].lstrip()
        i += 1
        if not line or line[0] in "#!":
            continue
        # A line ending in an odd number of backslashes continues on the next one.
        while _continues(line) and i < len(lines):
            line = line[:-1] + lines[i].lstrip()
            i += 1
        key, value = _split_property(line)
        props[_unescape(key)] = _unescape(value)
    return props


def _continues(line: str) -> bool:
    """Whether a properties line ends with an unescaped backslash."""
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def _split_property(line: str) -> tuple[str, str]:
    """Split a logical properties line into its raw key and raw value."""
    j, escaped = 0, False
    while j < len(line):
        c = line[j]
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c in "=: \t\f":
            break
        j += 1
    key, rest = line[:j], line[j:].lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t\f")
    return key, rest


def _unescape(text: str) -> str:
    """Undo Java properties escapes (\\t, \\n, \\uXXXX, \\x -> x)."""
    out, j = [], 0
    while j < len(text):
        c = text[j]
        if c != "\\" or j + 1 == len(text):
            out.append(c)
            j += 1
            continue
        n = text[j + 1]
        if n == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[j + 2 : j + 6]):
            out.append(chr(int(text[j + 2 : j + 6], 16)))
            j += 6
            continue
        out.append({"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(n, n))
        j += 2
    return "".join(out)


def _escape(value: str) -> str:
    """Escape a value so java.util.Properties reads it back unchanged."""
    text = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    text = text.replace("\t", "\\t").replace("\f", "\\f")
    return "\\" + text if text.startswith(" ") else text


def write_properties(path: Path, props: dict[str, str], header: str) -> None:
    """Write properties that Java reads back exactly as given."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{key}={_escape(value)}" for key, value in props.items()]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- models and snapshots -------------------------------------------------------------------


def parse_models(spec: str | None) -> list[str]:
    """Split "NAME=FILE.mar,FILE2.mar" into TorchServe load_models entries."""
    return [part.strip() for part in (spec or "").split(",") if part.strip()]


def model_name(entry: str, model_store: Path) -> str:
    """The model name a load_models entry registers ("name=file.mar" or the manifest's)."""
    if "=" in entry:
        return entry.split("=", 1)[0]
    mar = model_store / entry
    with zipfile.ZipFile(mar) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    return manifest["model"]["modelName"]


def latest_snapshot(run_dir: Path) -> Path | None:
    """The newest snapshot TorchServe wrote under RUN_DIR/logs/config, if any."""
    config_dir = Path(run_dir) / "logs" / "config"
    # Names start with a yyyyMMddHHmmssSSS timestamp, so the lexical maximum is the newest.
    found = [p for p in config_dir.glob("*.cfg") if p.name.endswith(("-snapshot.cfg", "-shutdown.cfg", "-startup.cfg"))]
    return max(found, key=lambda p: p.name) if found else None


def snapshot_models(snapshot_json: str) -> dict[str, list[str]]:
    """Model name -> versions held in a model_snapshot JSON value."""
    models = json.loads(snapshot_json).get("models", {})
    return {name: sorted(versions) for name, versions in models.items()}


# --- rendering --------------------------------------------------------------------------------


def store_url_pattern(model_store: Path) -> str:
    """A regex matching file:// URLs of .mar files directly inside model_store, nothing else."""
    return f"file://{re.escape(str(model_store))}/[A-Za-z0-9._-]+\\.mar"


def render_config(
    config: Path,
    run_dir: Path,
    model_store: Path,
    ports: Ports,
    models: list[str] | None = None,
    model_snapshot: str | None = None,
) -> Path:
    """Write RUN_DIR/config.properties: the base config with this instance's paths and ports."""
    config, run_dir, model_store = (Path(p).resolve() for p in (config, run_dir, model_store))
    props = read_properties(config)
    props.update(
        {
            "inference_address": f"http://{HOST}:{ports.inference}",
            "management_address": f"http://{HOST}:{ports.management}",
            "metrics_address": f"http://{HOST}:{ports.metrics}",
            "grpc_inference_address": HOST,
            "grpc_inference_port": str(ports.grpc_inference),
            "grpc_management_address": HOST,
            "grpc_management_port": str(ports.grpc_management),
            "model_store": str(model_store),
            "allowed_urls": store_url_pattern(model_store),
        }
    )
    if "vmargs" in props:
        props["vmargs"] = _absolute_log4j(props["vmargs"], config.parent)
    # TorchServe restores model_snapshot and then ignores load_models, so keep exactly one.
    props.pop("model_snapshot", None)
    props.pop("tsConfigFile", None)
    if models:
        props["load_models"] = ",".join(models)
    elif model_snapshot is not None:
        props.pop("load_models", None)
        props["model_snapshot"] = model_snapshot
    out = run_dir / "config.properties"
    write_properties(out, props, f"Rendered by serve.py from {config.name}; edit that file.")
    return out


def _absolute_log4j(vmargs: str, base: Path) -> str:
    """Make the -Dlog4j.configurationFile path in vmargs absolute (relative to base)."""
    words = vmargs.split()
    for k, word in enumerate(words):
        if word.startswith(LOG4J_FLAG):
            target = word[len(LOG4J_FLAG) :]
            if ":" not in target:
                path = (base / target).resolve()
                if not path.is_file():
                    raise ServeError(f"log4j config not found: {path}")
                if re.search(r"\s", str(path)):
                    raise ServeError(f"TorchServe splits vmargs on spaces; move {path}")
                words[k] = LOG4J_FLAG + str(path)
    return " ".join(words)


# --- lifecycle ----------------------------------------------------------------------------------


def start(
    run_dir: str | Path = "run",
    model_store: str | Path = "model_store",
    models: list[str] | str | None = None,
    ports: Ports | None = None,
    config: str | Path = DEFAULT_CONFIG,
    timeout: float = 180,
) -> Server:
    """Start TorchServe in the background and wait until every model has a READY worker.

    With models ("NAME=FILE.mar" entries) it loads those. Without, it restores the newest
    snapshot in RUN_DIR/logs/config (all versions, batch settings, default version).
    """
    run_dir = Path(run_dir).resolve()
    model_store = Path(model_store).resolve()
    ports = ports or Ports()
    models = parse_models(models) if isinstance(models, str) else list(models or [])
    if not model_store.is_dir():
        raise ServeError(f"model store not found: {model_store}")
    if (live := running(run_dir)) is not None:
        raise ServeError(f"TorchServe already runs from {run_dir} (pid {live.pid}); stop it first")
    # A frontend killed with SIGKILL leaves its workers spinning; clear them first.
    stop(run_dir)
    _check_ports_free(ports)
    for entry in models:
        mar = entry.split("=", 1)[-1]
        if "/" in mar or not (model_store / mar).is_file():
            raise ServeError(f"{mar} is not a file directly inside {model_store}")

    expected: dict[str, list[str]] = {}
    snapshot = None
    if models:
        for entry in models:
            expected.setdefault(model_name(entry, model_store), [])
    elif (snap_file := latest_snapshot(run_dir)) is not None:
        snapshot = read_properties(snap_file).get("model_snapshot")
        if snapshot:
            expected = snapshot_models(snapshot)

    tmp_dir = _tmp_dir(run_dir)
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (run_dir / KEY_FILE).unlink(missing_ok=True)
    rendered = render_config(config, run_dir, model_store, ports, models, snapshot)

    env = dict(os.environ)
    # TS_CONFIG_FILE would replace the rendered config; LOG_LOCATION would move logs and
    # snapshots away from RUN_DIR.
    env.pop("TS_CONFIG_FILE", None)
    env.update(
        TMPDIR=str(tmp_dir),
        TEMP=str(tmp_dir),
        LOG_LOCATION=str(logs),
        METRICS_LOCATION=str(logs),
    )
    cmd = [
        sys.executable,
        "-m",
        "ts.model_server",
        "--start",
        "--ts-config",
        str(rendered),
        "--model-store",
        str(model_store),
    ]
    with open(logs / "torchserve.out", "ab") as out:
        # The launcher forks the Java frontend and exits; a new session keeps the frontend
        # and its Python workers out of the caller's process group and terminal signals.
        launcher = subprocess.run(
            cmd,
            cwd=run_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            timeout=60,
        )
    if launcher.returncode != 0:
        raise ServeError(f"torchserve launcher failed\n{_log_tail(run_dir)}")
    pid = _read_pid(tmp_dir)
    server = Server(run_dir, pid, ports, model_store)
    state = {"pid": pid, "pgid": os.getpgid(pid), "ports": asdict(ports)}
    state.update(model_store=str(model_store), tmp_dir=str(tmp_dir))
    (run_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    try:
        _wait_ready(server, expected, timeout)
    except BaseException:
        stop(run_dir)
        raise
    return server


def stop(run_dir: str | Path = "run", timeout: float = 30) -> bool:
    """Stop the instance in RUN_DIR and its workers; True if something was running."""
    run_dir = Path(run_dir).resolve()
    state = _read_state(run_dir)
    if state is None:
        return False
    procs = _instance_processes(state)
    frontend = [p for p in procs if p.pid == state["pid"]]
    # SIGTERM lets the frontend write its shutdown snapshot and stop its workers itself.
    for proc in frontend or procs:
        _signal(proc, signal.SIGTERM)
    alive = _wait_gone(procs, timeout)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    _wait_gone(alive, 10)
    # Anything the workers forked is in the same process group.
    for proc in _instance_processes(state):
        _signal(proc, signal.SIGKILL)
    (run_dir / KEY_FILE).unlink(missing_ok=True)
    Path(state["tmp_dir"], ".model_server.pid").unlink(missing_ok=True)
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    return bool(procs)


def running(run_dir: str | Path = "run") -> Server | None:
    """The live instance started from RUN_DIR, or None."""
    run_dir = Path(run_dir).resolve()
    state = _read_state(run_dir)
    if state is None or not _is_frontend(state["pid"]):
        return None
    return Server(run_dir, state["pid"], Ports(**state["ports"]), Path(state["model_store"]))


def _read_state(run_dir: Path) -> dict | None:
    """The state start() left in RUN_DIR, or None."""
    try:
        return json.loads((run_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None


def _is_frontend(pid: int) -> bool:
    """Whether pid is (still) a TorchServe Java frontend, not a recycled pid."""
    try:
        return JAVA_MAIN in psutil.Process(pid).cmdline()
    except psutil.Error:
        return False


def _instance_processes(state: dict) -> list[psutil.Process]:
    """The frontend, its descendants and every process left in its process group."""
    procs: dict[int, psutil.Process] = {}
    if _is_frontend(state["pid"]):
        frontend = psutil.Process(state["pid"])
        procs[frontend.pid] = frontend
        for child in frontend.children(recursive=True):
            procs[child.pid] = child
    # While the frontend lives its process group is surely ours; after that, a member must
    # also name our private TMPDIR (frontend -Djava.io.tmpdir, worker socket paths).
    ours = bool(procs)
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or os.getpgid(proc.pid) != state["pgid"]:
                continue
            if ours or any(state["tmp_dir"] in arg for arg in proc.cmdline()):
                procs.setdefault(proc.pid, proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return list(procs.values())


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until the processes have exited; return those still alive at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if _alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def _alive(proc: psutil.Process) -> bool:
    """Whether a process still runs; a zombie only waits for its parent to reap it."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(proc: psutil.Process, sig: int) -> None:
    """Send a signal, ignoring processes that are already gone."""
    try:
        proc.send_signal(sig)
    except psutil.Error:
        pass


def _tmp_dir(run_dir: Path) -> Path:
    """A per-instance TMPDIR: it holds TorchServe's pid file, worker sockets and unpacked .mar."""
    tmp_dir = run_dir / "tmp"
    if len(str(tmp_dir)) > MAX_TMPDIR_LEN:
        raise ServeError(f"run dir path too long for worker sockets: {run_dir}")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    return tmp_dir


def _check_ports_free(ports: Ports) -> None:
    """Fail early, with the port named, if another process holds one of our ports."""
    for name, port in asdict(ports).items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
            except OSError:
                raise ServeError(f"{name} port {port} on {HOST} is in use") from None


def _read_pid(tmp_dir: Path) -> int:
    """The Java frontend pid the launcher wrote to TMPDIR/.model_server.pid."""
    return int((tmp_dir / ".model_server.pid").read_text().split()[0])


def _get_json(url: str, headers: dict[str, str]) -> object:
    """GET a URL and decode its JSON body."""
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _wait_ready(server: Server, expected: dict[str, list[str]], timeout: float) -> None:
    """Poll until the frontend answers and each expected model version has a READY worker."""
    deadline = time.monotonic() + timeout
    waiting = "the key file"
    while time.monotonic() < deadline:
        if not _is_frontend(server.pid):
            raise ServeError(f"TorchServe exited during startup\n{_log_tail(server.run_dir)}")
        try:
            waiting = _not_ready(server, expected)
        except (OSError, ValueError, KeyError) as error:
            waiting = f"the management API ({error})"
        if not waiting:
            return
        time.sleep(0.5)
    raise ServeError(
        f"TorchServe not ready after {timeout:.0f} s, still waiting for {waiting}\n" f"{_log_tail(server.run_dir)}"
    )


def _not_ready(server: Server, expected: dict[str, list[str]]) -> str:
    """What startup still waits for, or "" when every expected model is serving."""
    server.get_json(f"{server.inference_url}/ping", "inference")
    for name, versions in expected.items():
        try:
            described = server.describe(name)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return f"model {name} to be registered"
            raise
        by_version = {d["modelVersion"]: d for d in described}
        for version in versions or list(by_version):
            info = by_version.get(version)
            if info is None:
                return f"model {name} version {version} to be registered"
            if info.get("minWorkers", 1) == 0:
                continue
            if not any(w.get("status") == "READY" for w in info.get("workers", [])):
                return f"a READY worker for {name} version {version}"
        if not by_version:
            return f"model {name} to be registered"
    return ""


def _log_tail(run_dir: Path, lines: int = 40) -> str:
    """The last lines of the instance's logs, to show why it failed."""
    parts = []
    for name in ("torchserve.out", "ts_log.log", "model_log.log"):
        path = run_dir / "logs" / name
        if path.is_file():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(parts) or f"(no logs under {run_dir / 'logs'})"


# --- command line -----------------------------------------------------------------------------


def health(run_dir: str | Path = "run") -> str:
    """Why the instance in RUN_DIR cannot serve, or "" when it can.

    Healthy means: the frontend runs, /ping answers Healthy with the inference key (renewed if it
    expired: TorchServe 0.12 wants a key even there), and every registered version that should
    have workers has a READY one. This is the check for an exec liveness/readiness probe.
    """
    server = running(run_dir)
    if server is None:
        return f"TorchServe is not running from {Path(run_dir).resolve()}"
    try:
        ping = server.get_json(f"{server.inference_url}/ping", "inference")
        if not isinstance(ping, dict) or ping.get("status") != "Healthy":
            return f"/ping answered {ping!r}"
        waiting = _not_ready(server, {name: [] for name in server.models()})
    except (OSError, ValueError, KeyError) as error:
        return f"TorchServe does not answer properly: {error}"
    return f"waiting for {waiting}" if waiting else ""


def _print_status(server: Server | None, run_dir: Path) -> int:
    """Print what runs from RUN_DIR; exit status 0 if running, 3 if not (LSB style)."""
    if server is None:
        state = _read_state(run_dir)
        leftovers = _instance_processes(state) if state else []
        hint = f"; {len(leftovers)} leftover processes, run stop" if leftovers else ""
        print(f"not running ({run_dir}){hint}")
        return 3
    print(f"running  pid {server.pid}  run dir {server.run_dir}")
    print(f"inference  {server.inference_url}")
    print(f"management {server.management_url}")
    print(f"metrics    {server.metrics_url}")
    print(f"tokens     {server.key_file}")
    for name in server.models():
        for info in server.describe(name):
            states = ",".join(w["status"] for w in info.get("workers", [])) or "no workers"
            default = " (default)" if _is_default(server, name, info) else ""
            print(f"model {name} {info['modelVersion']}{default}: {states}")
    return 0


def _is_default(server: Server, name: str, info: dict) -> bool:
    """Whether info describes the default version of model name."""
    default = server.get_json(f"{server.management_url}/models/{name}", "management")
    return default[0]["modelVersion"] == info["modelVersion"]


def _parser() -> argparse.ArgumentParser:
    """The serve.py command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = Ports()

    p_start = sub.add_parser("start", help="start TorchServe and wait for READY workers")
    p_start.add_argument("--run-dir", default="run", help="instance directory (default: run)")
    p_start.add_argument("--model-store", default="model_store", help="directory of .mar files")
    p_start.add_argument(
        "--models",
        help="NAME=FILE.mar,... to load when RUN_DIR has no snapshot yet (or with --fresh)",
    )
    p_start.add_argument(
        "--fresh",
        action="store_true",
        help="load --models even if RUN_DIR holds a snapshot (drops registered versions and the default)",
    )
    for field, port in asdict(defaults).items():
        flag = "--" + field.replace("_", "-") + "-port"
        p_start.add_argument(flag, dest=field, type=int, default=port, metavar="PORT", help=f"(default {port})")
    p_start.add_argument("--config", default=str(DEFAULT_CONFIG), help="base config.properties")
    p_start.add_argument("--timeout", type=float, default=180, help="seconds to wait for READY")

    p_stop = sub.add_parser("stop", help="stop TorchServe and all its workers")
    p_stop.add_argument("--run-dir", default="run")
    p_stop.add_argument("--timeout", type=float, default=30, help="seconds before SIGKILL")

    p_status = sub.add_parser("status", help="show whether TorchServe runs and its models")
    p_status.add_argument("--run-dir", default="run")

    p_health = sub.add_parser(
        "health",
        help="exit 0 if TorchServe answers /ping and every model has a READY worker, else 1 (for probes)",
    )
    p_health.add_argument("--run-dir", default="run")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the serve.py command line."""
    args = _parser().parse_args(argv)
    run_dir = Path(args.run_dir).resolve()
    try:
        if args.command == "start":
            ports = Ports(*(getattr(args, f) for f in asdict(Ports())))
            models = args.models
            # A restart must keep every registered version and the chosen default, so a
            # snapshot wins over --models unless the caller asks for a fresh start.
            if models and not args.fresh and (snap := latest_snapshot(run_dir)) is not None:
                print(f"restoring {snap.name} (registered versions and default); --fresh loads {models} instead")
                models = None
            server = start(run_dir, args.model_store, models, ports, args.config, args.timeout)
            return _print_status(server, run_dir)
        if args.command == "stop":
            print("stopped" if stop(run_dir, args.timeout) else f"not running ({run_dir})")
            return 0
        if args.command == "health":
            problem = health(run_dir)
            print(f"unhealthy: {problem}" if problem else "healthy")
            return 1 if problem else 0
        return _print_status(running(run_dir), run_dir)
    except ServeError as error:
        print(f"serve.py {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
