"""Tests for movierec.torchserve (movierec-serve) and the production config.properties/log4j2.xml it renders.

Integration tests run a real TorchServe (Java) on free loopback ports with a throwaway echo
model, so they need neither the movierec handler nor trained artifacts.
"""

import ipaddress
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import psutil
import pytest
import requests

from movierec import torchserve
from movierec.paths import REPO as ROOT

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java")

ECHO_HANDLER = '''
import json


def handle(data, context):
    """Answer every request with the model version that served it."""
    if data is None:
        return None
    version = context.manifest["model"]["modelVersion"]
    return [json.dumps({"version": version}) for _ in data]
'''


def build_mar(store: Path, work: Path, version: str) -> Path:
    """Archive the echo handler as model "echo" into store/echo-VERSION.mar."""
    handler = work / "echo_handler.py"
    handler.write_text(ECHO_HANDLER)
    out = work / version
    out.mkdir()
    subprocess.run(
        [sys.executable, "-m", "model_archiver.model_packaging", "--model-name", "echo"]
        + ["--version", version, "--handler", str(handler), "--export-path", str(out)],
        check=True,
        capture_output=True,
    )
    mar = store / f"echo-{version}.mar"
    (out / "echo.mar").rename(mar)
    return mar


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A model store holding echo versions 1.0 and 2.0 under distinct file names."""
    store = tmp_path_factory.mktemp("store")
    work = tmp_path_factory.mktemp("build")
    for version in ("1.0", "2.0"):
        build_mar(store, work, version)
    return store


@pytest.fixture(scope="module")
def server(tmp_path_factory, store):
    """One TorchServe instance with echo 1.0, shared by the module's read-only tests."""
    run_dir = tmp_path_factory.mktemp("run")
    srv = torchserve.start(run_dir, store, ["echo=echo-1.0.mar"], torchserve.Ports.free(), timeout=90)
    yield srv
    torchserve.stop(run_dir)


def register(srv: torchserve.Server, url: str) -> requests.Response:
    """Ask the management API to register a model archive URL."""
    params = {"url": url, "initial_workers": 1, "synchronous": "true"}
    return requests.post(f"{srv.management_url}/models", params=params, headers=srv.auth("management"))


def instance_pids(srv: torchserve.Server) -> set[int]:
    """The frontend pid and its worker pids."""
    frontend = psutil.Process(srv.pid)
    return {srv.pid} | {p.pid for p in frontend.children(recursive=True)}


def wait_for(condition, timeout: float, what: str) -> None:
    """Poll condition() until it holds; fail naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what} after {timeout:.0f} s"
        time.sleep(0.2)


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie awaiting its reaper does not count)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- fast tests: no server --------------------------------------------------------------------


def test_properties_round_trip_backslashes(tmp_path):
    """Values with regex backslashes and JSON survive write -> Java-style read."""
    values = {"allowed_urls": r"file:///a\-b/[a-z]+\.mar", "snap": '{"m": {"1.0": "x y"}}'}
    path = tmp_path / "c.properties"
    torchserve.write_properties(path, values, "test")
    assert torchserve.read_properties(path) == values
    assert r"\\.mar" in path.read_text()


def test_read_properties_java_syntax(tmp_path):
    """Comments, ':' separators, continuations and escapes parse as Java does."""
    path = tmp_path / "c.properties"
    path.write_text("# c\n! c\na = 1\nb:2\nc long \\\n   value\nd=x\\\\.y\ne\\=k=v\n")
    props = torchserve.read_properties(path)
    assert props == {"a": "1", "b": "2", "c": "long value", "d": "x\\.y", "e=k": "v"}


def test_store_url_pattern_only_matches_files_in_store(tmp_path):
    """The allowed_urls regex admits store/*.mar and nothing beside or below it."""
    store = tmp_path / "my-store"
    pattern = re.compile(torchserve.store_url_pattern(store))
    assert pattern.fullmatch(f"file://{store}/movierec-1.0.mar")
    for url in (
        f"file://{store}/sub/x.mar",
        f"file://{store}/x.py",
        f"file://{store}-evil/x.mar",
        "https://example.com/x.mar",
        f"file://{tmp_path}/x.mar",
    ):
        assert not pattern.fullmatch(url), url


def test_render_config_snapshot_replaces_load_models(tmp_path):
    """A restored snapshot goes into model_snapshot and load_models is dropped."""
    store = tmp_path / "store"
    store.mkdir()
    snapshot = '{"name": "s", "modelCount": 1, "models": {"echo": {"2.0": {}}}}'
    path = torchserve.render_config(
        torchserve.DEFAULT_CONFIG, tmp_path, store, torchserve.Ports(1, 2, 3, 4, 5), None, snapshot
    )
    props = torchserve.read_properties(path)
    assert props["model_snapshot"] == snapshot
    assert "load_models" not in props
    assert props["model_store"] == str(store.resolve())
    assert props["grpc_management_port"] == "5"
    log4j = re.search(r"-Dlog4j\.configurationFile=(\S+)", props["vmargs"]).group(1)
    assert Path(log4j).is_absolute() and Path(log4j).is_file()


def test_cli_help():
    """Every subcommand answers --help."""
    for command in ([], ["start"], ["stop"], ["status"], ["health"]):
        result = subprocess.run(
            [sys.executable, str(ROOT / "serve.py"), *command, "--help"],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0 and "usage" in result.stdout


# --- integration: a real TorchServe -------------------------------------------------------------


@needs_java
@pytest.mark.integration
def test_everything_listens_on_loopback_only(server):
    """The live sockets: HTTP, metrics and both gRPC ports listen on 127.0.0.1 and nowhere else."""
    listening = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(server.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }
    assert {port for _, port in listening} == set(asdict(server.ports).values())
    # Java reports IPv4 binds on its dual-stack sockets as ::ffff:127.0.0.1.
    for ip, port in listening:
        address = ipaddress.ip_address(ip)
        address = getattr(address, "ipv4_mapped", None) or address
        assert address == ipaddress.ip_address("127.0.0.1"), (ip, port)


@needs_java
@pytest.mark.integration
def test_token_authorization_is_on(server):
    """Calls without a valid key are refused; the inference key works."""
    predict = f"{server.inference_url}/predictions/echo"
    assert requests.get(f"{server.inference_url}/ping").status_code == 400
    assert requests.post(predict, data=b"{}").status_code == 400
    assert requests.post(predict, data=b"{}", headers=server.auth("management")).status_code == 400
    assert requests.get(f"{server.management_url}/models").status_code == 400
    assert requests.get(f"{server.inference_url}/ping", headers=server.auth()).status_code == 200
    answer = requests.post(predict, data=b"{}", headers=server.auth())
    assert answer.status_code == 200 and answer.json() == {"version": "1.0"}


@needs_java
@pytest.mark.integration
def test_health_probe_passes_on_a_serving_instance_and_fails_without_one(server, tmp_path, capsys):
    assert torchserve.health(server.run_dir) == ""
    assert torchserve.main(["health", "--run-dir", str(server.run_dir)]) == 0
    assert capsys.readouterr().out.strip() == "healthy"
    assert torchserve.main(["health", "--run-dir", str(tmp_path)]) == 1
    assert "unhealthy: TorchServe is not running" in capsys.readouterr().out


@needs_java
@pytest.mark.integration
def test_status_lists_versions_workers_and_the_default(server, tmp_path, capsys):
    """`movierec-serve status` exits 0 and names each version's workers and the default; 3 when nothing runs."""
    assert torchserve.main(["status", "--run-dir", str(server.run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"running  pid {server.pid}" in out and "model echo 1.0 (default): READY" in out
    assert torchserve.main(["status", "--run-dir", str(tmp_path)]) == 3
    assert capsys.readouterr().out.startswith("not running")


@pytest.mark.integration
def test_health_probe_fails_while_a_model_has_no_ready_worker(server, store, tmp_path):
    """A registered version whose worker cannot load makes the instance unhealthy until removed."""
    handler = tmp_path / "broken_handler.py"
    handler.write_text("def handle(data, context):\n    raise RuntimeError('cannot load')\n")
    subprocess.run(
        [sys.executable, "-m", "model_archiver.model_packaging", "--model-name", "broken", "--version", "1.0"]
        + ["--handler", str(handler), "--export-path", str(store)],
        check=True,
        capture_output=True,
    )
    params = {"url": "broken.mar", "initial_workers": 1, "synchronous": "false"}
    url = f"{server.management_url}/models"
    assert requests.post(url, params=params, headers=server.auth("management")).status_code == 202
    try:
        assert torchserve.health(server.run_dir) == "waiting for a READY worker for broken version 1.0"
    finally:
        requests.delete(f"{url}/broken/1.0", headers=server.auth("management"))
        (store / "broken.mar").unlink()
    wait_for(lambda: torchserve.health(server.run_dir) == "", 60, "health after unregistering broken")


@pytest.mark.integration
def test_registration_urls_outside_the_store_are_refused(server, tmp_path):
    """Remote URLs, '..' paths and files outside the store cannot be registered."""
    outside = tmp_path / "outside.mar"
    shutil.copy(server.model_store / "echo-2.0.mar", outside)
    for url in (
        "https://example.com/echo.mar",
        "http://127.0.0.1:1/echo.mar",
        f"file://{outside}",
        f"file://{server.model_store}/../{tmp_path.name}/outside.mar",
        f"../{server.model_store.name}/echo-2.0.mar",
        str(outside),
    ):
        answer = register(server, url)
        assert answer.status_code in (400, 404), (url, answer.status_code, answer.text)
    assert [d["modelVersion"] for d in server.describe("echo")] == ["1.0"]


@needs_java
@pytest.mark.integration
def test_bare_file_name_registers_from_the_store(server):
    """A bare file name resolves inside the store (allowed_urls is not consulted for it)."""
    headers = server.auth("management")
    try:
        answer = register(server, "echo-2.0.mar")
        assert answer.status_code == 200, answer.text
        versions = sorted(d["modelVersion"] for d in server.describe("echo"))
        assert versions == ["1.0", "2.0"]
    finally:
        requests.delete(f"{server.management_url}/models/echo/2.0", headers=headers)


@needs_java
@pytest.mark.integration
def test_store_file_url_passes_allowed_urls_but_is_not_copied_onto_itself(server):
    """0.12 'downloads' a file:// URL into the store, so one pointing there fails (500)."""
    answer = register(server, f"file://{server.model_store}/echo-2.0.mar")
    assert answer.status_code == 500
    assert "already exists" in answer.json()["message"]
    assert [d["modelVersion"] for d in server.describe("echo")] == ["1.0"]


@needs_java
@pytest.mark.integration
def test_start_and_status_outlive_expired_keys(store, tmp_path):
    """TorchServe never renews a key; a slow start or a later status check renews its own."""
    props = torchserve.read_properties(torchserve.DEFAULT_CONFIG)
    props["token_expiration_min"] = "0.02"  # 1 s (TorchServe truncates to whole seconds)
    config = tmp_path / "config.properties"
    torchserve.write_properties(config, props, "keys that expire during startup")
    shutil.copy(Path(torchserve.DEFAULT_CONFIG).parent / "log4j2.xml", tmp_path / "log4j2.xml")
    run_dir = tmp_path / "run"
    # Startup outlasts a 1 s key, so start() itself must renew keys before it sees READY.
    srv = torchserve.start(run_dir, store, ["echo=echo-1.0.mar"], torchserve.Ports.free(), config=config, timeout=90)
    try:
        stale = {kind: srv.token(kind) for kind in ("management", "inference")}

        def expired() -> bool:
            models = requests.get(
                f"{srv.management_url}/models", headers={"Authorization": f"Bearer {stale['management']}"}
            )
            ping = requests.get(f"{srv.inference_url}/ping", headers={"Authorization": f"Bearer {stale['inference']}"})
            return models.status_code == ping.status_code == 400

        wait_for(expired, 30, "both keys to expire")
        assert srv.models() == ["echo"]
        assert torchserve.health(run_dir) == ""
        assert torchserve.main(["status", "--run-dir", str(run_dir)]) == 0
        assert all(srv.token(kind) != key for kind, key in stale.items())
    finally:
        assert torchserve.stop(run_dir) is True


@pytest.mark.integration
def test_restart_keeps_versions_and_default_and_stop_leaves_nothing(store, tmp_path):
    """Restart without models restores both versions and the chosen default; stop is clean."""
    run_dir = tmp_path / "run"
    server = torchserve.start(run_dir, store, ["echo=echo-1.0.mar"], torchserve.Ports.free(), timeout=90)
    assert register(server, "echo-2.0.mar").status_code == 200
    url = f"{server.management_url}/models/echo/2.0/set-default"
    assert requests.put(url, headers=server.auth("management")).status_code == 200
    assert torchserve.stop(run_dir) is True
    assert torchserve.latest_snapshot(run_dir).name.endswith("-shutdown.cfg")

    srv = torchserve.start(run_dir, store, None, torchserve.Ports.free(), timeout=90)
    try:
        described = {d["modelVersion"]: d for d in srv.describe("echo")}
        assert sorted(described) == ["1.0", "2.0"]
        assert all(any(w["status"] == "READY" for w in d["workers"]) for d in described.values())
        default = requests.get(f"{srv.management_url}/models/echo", headers=srv.auth("management"))
        assert default.json()[0]["modelVersion"] == "2.0"
        answer = requests.post(f"{srv.inference_url}/predictions/echo", headers=srv.auth())
        assert json.loads(answer.text) == {"version": "2.0"}
        pids = instance_pids(srv)
        assert len(pids) == 3  # the frontend and one worker per version
    finally:
        assert torchserve.stop(run_dir) is True
    assert not [pid for pid in pids if alive(pid)]
    assert torchserve.running(run_dir) is None
    assert not (run_dir / "key_file.json").exists()
    assert torchserve.stop(run_dir) is False
