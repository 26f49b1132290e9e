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
from dataclasses import asdict
from pathlib import Path

import psutil
import pytest
import requests

from movierec import torchserve
from movierec.paths import REPO as ROOT
from movierec.torchserve import registry
from tests.conftest import needs_java, wait_until

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


def instance_pids(srv: torchserve.Server) -> set[int]:
    """The frontend pid and its worker pids."""
    frontend = psutil.Process(srv.pid)
    return {srv.pid} | {p.pid for p in frontend.children(recursive=True)}


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


def test_render_config_serves_the_snapshot_and_closes_every_other_door(tmp_path):
    """The rendered config holds the snapshot, no load_models, the model API off and nothing downloadable."""
    store = tmp_path / "store"
    store.mkdir()
    snapshot = '{"name": "s", "modelCount": 1, "models": {"echo": {"2.0": {}}}}'
    path = torchserve.render_config(
        torchserve.DEFAULT_CONFIG, tmp_path, store, torchserve.Ports(1, 2, 3, 4, 5), snapshot
    )
    props = torchserve.read_properties(path)
    assert props["model_snapshot"] == snapshot
    assert "load_models" not in props
    assert props["enable_model_api"] == "false"
    assert props["allowed_urls"] == "^$" and not re.fullmatch(props["allowed_urls"], "file:///x.mar")
    workflows = Path(props["workflow_store"])
    assert workflows.is_dir() and not any(workflows.iterdir()) and workflows != store
    assert props["model_store"] == str(store.resolve())
    assert props["grpc_management_port"] == "5"
    log4j = re.search(r"-Dlog4j\.configurationFile=(\S+)", props["vmargs"]).group(1)
    assert Path(log4j).is_absolute() and Path(log4j).is_file()


def test_only_regular_mar_files_directly_in_the_store_are_served(store, tmp_path):
    """check_archive refuses symlinks (even to a real archive), directories, paths and other names."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.mar").write_bytes((store / "echo-1.0.mar").read_bytes())
    mixed = tmp_path / "store"
    mixed.mkdir()
    shutil.copy(store / "echo-1.0.mar", mixed / "echo-1.0.mar")
    (mixed / "link.mar").symlink_to(outside / "evil.mar")
    (mixed / "inner.mar").symlink_to(mixed / "echo-1.0.mar")
    (mixed / "dir.mar").mkdir()
    assert registry.check_archive(mixed, "echo-1.0.mar") == mixed.resolve() / "echo-1.0.mar"
    for name in ("link.mar", "inner.mar", "dir.mar", "../outside/evil.mar", str(outside / "evil.mar"), "x.py"):
        with pytest.raises(torchserve.ServeError):
            registry.check_archive(mixed, name)
    with pytest.raises(torchserve.ServeError, match="dir.mar is not a regular file"):
        torchserve.start(tmp_path / "run", mixed, None, torchserve.Ports.free())
    assert not (tmp_path / "run" / "serve.json").exists()


def test_plan_keeps_defaults_and_workers_and_adds_batch_registrations_at_zero_workers():
    """New archives join, removed ones go, kept versions keep their settings; movierec-batch mirrors movierec."""
    settings = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 32, "maxBatchDelay": 1, "responseTimeout": 30}
    archives = [registry.Archive(f"movierec-{v}.mar", "movierec", v, settings) for v in ("2.0", "3.0")]
    previous = {
        "movierec": {
            "1.0": {"defaultVersion": False, "minWorkers": 1},
            "2.0": {"defaultVersion": True, "minWorkers": 3, "maxWorkers": 3, "batchSize": 8, "maxBatchDelay": 5},
        },
        "movierec-batch": {"2.0": {"defaultVersion": True, "minWorkers": 2, "maxWorkers": 2}},
    }
    models = registry.plan_models(archives, previous)
    assert sorted(models) == ["movierec", "movierec-batch"]
    served = models["movierec"]
    assert sorted(served) == ["2.0", "3.0"]
    assert served["2.0"]["defaultVersion"] and not served["3.0"]["defaultVersion"]
    assert (served["2.0"]["minWorkers"], served["3.0"]["minWorkers"]) == (3, 1)
    # Batching is the archive's own (a rebuilt archive's new batchSize takes effect on reload).
    assert (served["2.0"]["batchSize"], served["2.0"]["maxBatchDelay"]) == (32, 1)
    assert served["3.0"]["marName"] == "movierec-3.0.mar"
    for version, entry in models["movierec-batch"].items():
        assert (entry["minWorkers"], entry["batchSize"], entry["maxBatchDelay"]) == (0, 1, 1)
        assert entry["marName"] == f"movierec-{version}.mar"
        assert entry["defaultVersion"] == (version == "2.0")
    fresh = registry.plan_models(archives)
    assert fresh["movierec"]["2.0"]["defaultVersion"] and fresh["movierec"]["2.0"]["minWorkers"] == 1


def test_cli_help():
    """Every subcommand answers --help."""
    for command in ([], ["start"], ["reload"], ["stop"], ["status"], ["health"]):
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


@needs_java
@pytest.mark.integration
def test_health_probe_fails_while_a_model_has_no_ready_worker(tmp_path):
    """A version whose worker cannot load (again) makes the instance unhealthy until it loads."""
    flag = tmp_path / "fail-to-load"
    handler = tmp_path / "gated_handler.py"
    handler.write_text(
        "import os\n\n\ndef handle(data, context):\n"
        f"    if data is None and os.path.exists({str(flag)!r}):\n"
        "        raise RuntimeError('cannot load')\n"
        "    return None if data is None else ['{}' for _ in data]\n"
    )
    gated_store = tmp_path / "store"
    gated_store.mkdir()
    subprocess.run(
        [sys.executable, "-m", "model_archiver.model_packaging", "--model-name", "gated", "--version", "1.0"]
        + ["--handler", str(handler), "--export-path", str(gated_store)],
        check=True,
        capture_output=True,
    )
    run_dir = tmp_path / "run"
    srv = torchserve.start(run_dir, gated_store, None, torchserve.Ports.free(), timeout=90)
    try:
        assert torchserve.health(run_dir) == ""
        flag.touch()
        psutil.Process(srv.describe("gated")[0]["workers"][0]["pid"]).kill()
        wait_until(lambda: torchserve.health(run_dir) != "", 30, "health to notice the lost worker")
        assert torchserve.health(run_dir) == "waiting for a READY worker for gated version 1.0"
        flag.unlink()
        wait_until(lambda: torchserve.health(run_dir) == "", 90, "health after the worker loads again")
    finally:
        torchserve.stop(run_dir)


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

        wait_until(expired, 30, "both keys to expire")
        assert srv.models() == ["echo"]
        assert torchserve.health(run_dir) == ""
        assert torchserve.main(["status", "--run-dir", str(run_dir)]) == 0
        assert all(srv.token(kind) != key for kind, key in stale.items())
    finally:
        assert torchserve.stop(run_dir) is True


@needs_java
@pytest.mark.integration
def test_restart_keeps_versions_default_and_workers_and_stop_leaves_nothing(store, tmp_path):
    """Restart without models restores both versions, the chosen default and worker counts; stop is clean."""
    run_dir = tmp_path / "run"
    models = ["echo=echo-1.0.mar", "echo=echo-2.0.mar"]
    server = torchserve.start(run_dir, store, models, torchserve.Ports.free(), timeout=90)
    with server.client() as api:
        api.set_default("2.0", model="echo")
        api.scale("1.0", 2, model="echo")
    assert torchserve.stop(run_dir) is True
    assert torchserve.latest_snapshot(run_dir).name.endswith("-shutdown.cfg")

    srv = torchserve.start(run_dir, store, None, torchserve.Ports.free(), timeout=90)
    try:
        described = {d["modelVersion"]: d for d in srv.describe("echo")}
        assert sorted(described) == ["1.0", "2.0"]
        assert [len(described[v]["workers"]) for v in ("1.0", "2.0")] == [2, 1]
        assert all(any(w["status"] == "READY" for w in d["workers"]) for d in described.values())
        default = requests.get(f"{srv.management_url}/models/echo", headers=srv.auth("management"))
        assert default.json()[0]["modelVersion"] == "2.0"
        answer = requests.post(f"{srv.inference_url}/predictions/echo", headers=srv.auth())
        assert json.loads(answer.text) == {"version": "2.0"}
        pids = instance_pids(srv)
        assert len(pids) == 4  # the frontend and three workers
    finally:
        assert torchserve.stop(run_dir) is True
    assert not [pid for pid in pids if alive(pid)]
    assert torchserve.running(run_dir) is None
    assert not (run_dir / "key_file.json").exists()
    assert torchserve.stop(run_dir) is False


@needs_java
@pytest.mark.integration
def test_reload_serves_what_the_store_holds_and_keeps_the_default(store, tmp_path, capsys):
    """A version added to the store is served after reload, a removed one is gone; the default stays."""
    own_store = tmp_path / "store"
    own_store.mkdir()
    shutil.copy(store / "echo-1.0.mar", own_store)
    run_dir = tmp_path / "run"
    srv = torchserve.start(run_dir, own_store, None, torchserve.Ports.free(), timeout=90)
    try:
        shutil.copy(store / "echo-2.0.mar", own_store)
        assert torchserve.main(["reload", "--run-dir", str(run_dir)]) == 0
        assert "model echo 2.0: READY" in capsys.readouterr().out
        again = torchserve.running(run_dir)
        assert again.ports == srv.ports and again.pid != srv.pid
        assert sorted(d["modelVersion"] for d in again.describe("echo")) == ["1.0", "2.0"]
        with again.client() as api:
            assert api.default_version("echo") == "1.0"
            api.set_default("2.0", model="echo")
        (own_store / "echo-1.0.mar").unlink()
        torchserve.reload(run_dir)
        assert [d["modelVersion"] for d in srv.describe("echo")] == ["2.0"]
        # A bad store never takes the serving instance down.
        (own_store / "bad.mar").symlink_to(store / "echo-1.0.mar")
        with pytest.raises(torchserve.ServeError, match="bad.mar is not a regular file"):
            torchserve.reload(run_dir)
        assert torchserve.health(run_dir) == ""
    finally:
        torchserve.stop(run_dir)
