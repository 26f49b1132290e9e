"""The KServe deployment: storage-layout config, manifests, staging, and TorchServe started as KServe starts it."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pytest
import requests
import yaml

from model.arrow import ARROW_STREAM
from model.artifact import load_artifact
from model.core import Recommender
from movierec import torchserve
from movierec.client.api import MovieRecClient
from movierec.client.arrow_scoring import read_answer, request_body
from movierec.client.scoring import score_csv
from movierec.torchserve.archive import BATCH_KEYS, batch_settings, load_model_config

REPO = Path(__file__).resolve().parent.parent
KSERVE = REPO / "deploy" / "kserve"
CONFIG = KSERVE / "config" / "config.properties"
MANIFEST = KSERVE / "inferenceservice.yaml"
CANARY = KSERVE / "inferenceservice-canary.yaml"
BATCH = KSERVE / "inferenceservice-batch.yaml"


def load_stage():
    """deploy/kserve/stage.py as a module (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("kserve_stage", KSERVE / "stage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wrapper_parse(text: str) -> dict[str, str]:
    """config.properties as KServe's TorchServe wrapper reads it (kserve_wrapper/__main__.py parse_config)."""
    keys = {}
    for line in text.splitlines(keepends=True):
        if not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            keys[name.strip()] = value.strip()
    return keys


def snapshot(props: dict[str, str]) -> dict:
    """The model_snapshot JSON of a config."""
    return json.loads(props["model_snapshot"])


# --- the layout and manifests (no TorchServe) ---------------------------------------------------


def test_config_keeps_the_kserve_contract():
    """What the runtime and its wrapper rely on: loopback 8085, the mounted store, movierec 1.0 by snapshot.

    Tokens off, envelope ignored, registration locked and Prometheus metrics are checked on a
    running instance below.
    """
    props = torchserve.read_properties(CONFIG)
    assert props["inference_address"] == props["management_address"] == "http://127.0.0.1:8085"
    # The runtime annotates the pod with prometheus.kserve.io/port=8082.
    assert props["metrics_address"] == "http://0.0.0.0:8082"
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert props["model_store"] == "/mnt/models/model-store"
    assert props["install_py_dep_per_model"] == "false"
    assert "service_envelope" not in props and "load_models" not in props
    models = snapshot(props)["models"]
    assert list(models) == ["movierec"] and list(models["movierec"]) == ["1.0"]
    v1 = models["movierec"]["1.0"]
    assert v1["defaultVersion"] is True and v1["marName"] == "movierec-1.0.mar"


def test_config_batching_is_the_model_configs():
    """The tracked snapshot serves with exactly the workers and batching of handler/model-config.yaml."""
    (v1,) = snapshot(torchserve.read_properties(CONFIG))["models"]["movierec"].values()
    assert {k: v1[k] for k in BATCH_KEYS if k in v1} == batch_settings()
    assert set(batch_settings()) == set(BATCH_KEYS)


def test_stage_takes_the_batching_from_the_archive():
    """render_config writes the given batching into the snapshot and keeps the rest of the template."""
    template = CONFIG.read_text(encoding="utf-8")
    batching = {"minWorkers": 2, "maxWorkers": 3, "batchSize": 7, "maxBatchDelay": 9, "responseTimeout": 11}
    staged = wrapper_parse(load_stage().render_config(template, "movierec-3.0.mar", "3.0", batching))
    (settings,) = snapshot(staged)["models"]["movierec"].values()
    assert {k: settings[k] for k in batching} == batching
    assert {k: v for k, v in staged.items() if k != "model_snapshot"} == {
        k: v for k, v in wrapper_parse(template).items() if k != "model_snapshot"
    }


def test_kserve_wrapper_reads_the_config_as_torchserve_does():
    """The wrapper's naive KEY=VALUE parser and java.util.Properties agree on every key."""
    text = CONFIG.read_text(encoding="utf-8")
    assert "\\" not in text, "the wrapper does not undo properties escapes or join continued lines"
    wrapper = wrapper_parse(text)
    assert wrapper == torchserve.read_properties(CONFIG)
    # What the wrapper derives: predictor host for /v1/models/movierec:predict and the served names.
    assert wrapper["inference_address"].split("//")[1] == "127.0.0.1:8085"
    assert list(snapshot(wrapper)["models"]) == ["movierec"]


def test_manifests_deploy_movierec_and_a_10_percent_canary():
    """Both manifests are InferenceServices for movierec; only the canary sets canaryTrafficPercent."""
    main = yaml.safe_load(MANIFEST.read_text())
    canary = yaml.safe_load(CANARY.read_text())
    for doc in (main, canary):
        assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
        assert doc["metadata"]["name"] == "movierec"
        # canaryTrafficPercent needs Knative.
        assert doc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
        model = doc["spec"]["predictor"]["model"]
        assert model["modelFormat"]["name"] == "pytorch" and model["protocolVersion"] == "v1"
        assert model["resources"]["limits"]["memory"]
    assert "canaryTrafficPercent" not in main["spec"]["predictor"]
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 10
    main_uri = main["spec"]["predictor"]["model"]["storageUri"]
    canary_uri = canary["spec"]["predictor"]["model"]["storageUri"]
    assert main_uri.endswith("/v1.0") and canary_uri.endswith("/v2.0")


def test_batch_manifest_scales_movierec_batch_to_zero_on_concurrency():
    """The bulk-scoring InferenceService: its own name, scale to zero, concurrency autoscaling, its own resources."""
    doc = yaml.safe_load(BATCH.read_text())
    latency = yaml.safe_load(MANIFEST.read_text())
    assert doc["kind"] == "InferenceService" and doc["metadata"]["name"] == load_stage().BATCH_MODEL_NAME
    assert doc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    predictor = doc["spec"]["predictor"]
    assert predictor["minReplicas"] == 0 and predictor["maxReplicas"] > 1
    assert predictor["scaleMetric"] == "concurrency"
    # One chunk per worker per pod before Knative adds a pod.
    assert predictor["scaleTarget"] == load_stage().BATCH_SETTINGS["minWorkers"]
    model = predictor["model"]
    assert model["protocolVersion"] == "v1" and model["runtime"] == "kserve-torchserve"
    assert model["resources"] != latency["spec"]["predictor"]["model"]["resources"]
    assert "movierec-batch" in model["storageUri"]


def test_stage_batch_serves_the_archive_as_movierec_batch_with_bulk_settings():
    """--batch renames the model in the snapshot and replaces the archive's batching with the bulk one."""
    stage = load_stage()
    template = CONFIG.read_text(encoding="utf-8")
    staged = wrapper_parse(
        stage.render_config(template, "movierec-1.0.mar", "1.0", stage.BATCH_SETTINGS, "movierec-batch")
    )
    models = snapshot(staged)["models"]
    assert list(models) == ["movierec-batch"]
    settings = models["movierec-batch"]["1.0"]
    assert {k: settings[k] for k in stage.BATCH_SETTINGS} == stage.BATCH_SETTINGS
    assert settings["marName"] == "movierec-1.0.mar" and settings["defaultVersion"] is True


# --- staging and a real TorchServe with the KServe config -------------------------------------


@pytest.fixture(scope="module")
def layouts(model_store, tmp_path_factory) -> dict[str, Path]:
    """Version -> a staged KServe layout (config/ + model-store/), as `make kserve-layout` writes it."""
    stage = load_stage()
    root = tmp_path_factory.mktemp("kserve-layout")
    return {v: stage.stage(model_store / f"movierec-{v}.mar", root / f"v{v}") for v in ("1.0", "2.0")}


@pytest.mark.integration
def test_stage_writes_one_complete_layout_per_version(layouts):
    """1.0 reproduces the tracked config exactly; 2.0 differs only in its model_snapshot."""
    template = CONFIG.read_text(encoding="utf-8")
    assert (layouts["1.0"] / "config" / "config.properties").read_text() == template
    staged = torchserve.read_properties(layouts["2.0"] / "config" / "config.properties")
    models = snapshot(staged)["models"]["movierec"]
    assert list(models) == ["2.0"] and models["2.0"]["marName"] == "movierec-2.0.mar"
    archived = batch_settings(load_model_config(layouts["2.0"] / "model-store" / "movierec-2.0.mar"))
    assert {k: models["2.0"][k] for k in archived} == archived
    assert {k: v for k, v in staged.items() if k != "model_snapshot"} == {
        k: v for k, v in torchserve.read_properties(CONFIG).items() if k != "model_snapshot"
    }
    for version, layout in layouts.items():
        assert [p.name for p in (layout / "model-store").iterdir()] == [f"movierec-{version}.mar"]


@pytest.mark.integration
def test_stage_refuses_an_archive_of_another_model(tmp_path, model_store):
    """A .mar whose manifest names another model is not staged."""
    other = tmp_path / "other-1.0.mar"
    with zipfile.ZipFile(model_store / "movierec-1.0.mar") as src, zipfile.ZipFile(other, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelName"] = "other"
                data = json.dumps(manifest).encode()
            dst.writestr(item, data)
    with pytest.raises(ValueError, match="expected 'movierec'"):
        load_stage().stage(other, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@dataclass
class KServeTorchServe:
    """TorchServe started from a KServe layout: the shared inference/management URL and its files."""

    version: str
    url: str
    metrics_url: str
    root: Path


def _override(config: Path, values: dict[str, str]) -> None:
    """Replace KEY=VALUE lines in place, keeping comments and layout (the wrapper's format)."""
    lines = config.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        key = line.split("=", 1)[0]
        if not line.startswith("#") and key in values:
            lines[i] = f"{key}={values.pop(key)}"
    assert not values, f"keys not in the config: {values}"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module", params=["1.0", "2.0"])
def kserve_ts(request, layouts, tmp_path_factory):
    """TorchServe run exactly as the kserve-torchserve runtime runs it, from a copy of one staged layout."""
    version = request.param
    root = tmp_path_factory.mktemp(f"kserve-ts-{version}")
    yield from _run_kserve(layouts[version], root, "movierec", version)


@pytest.fixture(scope="module")
def kserve_batch(model_store, tmp_path_factory):
    """TorchServe from the --batch layout of 1.0 (inferenceservice-batch.yaml's), run as the runtime runs it."""
    root = tmp_path_factory.mktemp("kserve-batch")
    layout = load_stage().stage(model_store / "movierec-1.0.mar", root / "layout", batch=True)
    yield from _run_kserve(layout, root, "movierec-batch", "1.0")


def _run_kserve(layout: Path, root: Path, model: str, version: str):
    """Start TorchServe from a copy of `layout` under root as the runtime does; yield it; stop it.

    Deliberately not torchserve.start(): that renders its own config and passes other flags. Here
    the launcher gets the runtime's own command line (`--start --model-store=... --ts-config=...`)
    and the staged config; only addresses and ports change (free loopback ones).
    enable_envvars_config=false means TS_* variables cannot do it, so the copy is edited; the pod's
    TS_SERVICE_ENVELOPE=kserve is set, and every other TS_* variable dropped, to show it is ignored.
    TMPDIR, cwd and logs live under the test's own directory, so torchserve.stop() can end it.
    """
    mnt = root / "mnt" / "models"
    shutil.copytree(layout, mnt)
    workers = snapshot(torchserve.read_properties(mnt / "config" / "config.properties"))["models"][model][version][
        "minWorkers"
    ]
    inference, metrics, grpc_inference, grpc_management = torchserve.free_ports(4)
    ports = torchserve.Ports(inference, inference, metrics, grpc_inference, grpc_management)
    address = f"http://{torchserve.HOST}:{inference}"
    _override(
        mnt / "config" / "config.properties",
        {
            "inference_address": address,
            "management_address": address,
            "metrics_address": f"http://{torchserve.HOST}:{metrics}",
            "grpc_inference_port": str(grpc_inference),
            "grpc_management_port": str(grpc_management),
        },
    )
    tmp_dir, logs = root / "tmp", root / "logs"
    tmp_dir.mkdir()
    assert len(str(tmp_dir)) <= torchserve.MAX_TMPDIR_LEN
    base = {k: v for k, v in os.environ.items() if not k.startswith("TS_")}
    env = torchserve.torchserve_env(tmp_dir, logs, base, TS_SERVICE_ENVELOPE="kserve")
    args = ["--start", f"--model-store={mnt}/model-store", f"--ts-config={mnt}/config/config.properties"]
    server = torchserve.launch(root, args, env, ports, mnt / "model-store")
    pids: set[int] = set()
    try:
        # No key file: token auth is off, so the readiness poll sends no token at all.
        torchserve.wait_ready(server, {model: [version]}, timeout=180)
        yield KServeTorchServe(version, address, server.metrics_url, root)
        # After the tests every worker of the snapshot has long started.
        pids = {server.pid} | {p.pid for p in psutil.Process(server.pid).children(recursive=True)}
    finally:
        assert torchserve.stop(root) is True
    assert len(pids) == 1 + workers and not [pid for pid in pids if _alive(pid)]
    assert not (root / "key_file.json").exists()


def _alive(pid: int) -> bool:
    """Whether pid runs (a zombie awaiting its reaper does not count)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def references(tiny_artifact, tiny_artifact_b):
    """Version -> (artifact, in-process Recommender) of the archive that version was built from."""
    refs = {}
    for version, path in (("1.0", tiny_artifact), ("2.0", tiny_artifact_b)):
        art = load_artifact(path)
        refs[version] = (art, Recommender(art))
    return refs


def _pairs(art, rng, n: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """n random known (user, movie) rows and their request instances."""
    urows, mrows = rng.integers(0, len(art.users), n), rng.integers(0, len(art.movies), n)
    instances = [
        {"user_id": art.users.ids[u], "movie_id": art.movies.ids[m]} for u, m in zip(urows, mrows, strict=True)
    ]
    return urows, mrows, instances


@pytest.mark.integration
def test_v1_predict_without_token_returns_the_handlers_predictions(kserve_ts, references):
    """The wrapper's forward (POST /v1/models/movierec:predict, no token) reaches our handler unwrapped."""
    art, rec = references[kserve_ts.version]
    urows, mrows, instances = _pairs(art, np.random.default_rng(7), 50)
    instances[3] = {"user_id": 99999, "movie_id": art.movies.ids[0]}
    r = requests.post(f"{kserve_ts.url}/v1/models/movierec:predict", json={"instances": instances}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    # No kserve envelope around it: exactly our handler's answer.
    assert set(body) == {"predictions", "model_version"} and body["model_version"] == kserve_ts.version
    preds = body["predictions"]
    assert len(preds) == 50 and "error" in preds[3]
    good = [i for i in range(50) if i != 3]
    expected = rec.predict_exact(urows[good], mrows[good])
    assert np.abs(np.array([preds[i]["rating"] for i in good]) - expected).max() < 1e-4


@pytest.mark.integration
def test_concurrent_requests_are_batched_without_mixing_answers(kserve_ts, references):
    """batch_size 32: concurrent requests share handler calls and each still gets its own answer."""
    art, rec = references[kserve_ts.version]
    rng = np.random.default_rng(11)
    jobs = [_pairs(art, rng, 5) for _ in range(24)]

    def send(job):
        return requests.post(f"{kserve_ts.url}/v1/models/movierec:predict", json={"instances": job[2]}, timeout=30)

    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(send, jobs))
    for (urows, mrows, _), r in zip(jobs, answers, strict=True):
        assert r.status_code == 200, r.text
        got = np.array([p["rating"] for p in r.json()["predictions"]])
        assert np.abs(got - rec.predict_exact(urows, mrows)).max() < 1e-4


@pytest.mark.integration
def test_readiness_probe_and_locked_management(kserve_ts):
    """The wrapper's readiness check and /ping need no token; the snapshot's batching is in effect; no registration."""
    described = requests.get(f"{kserve_ts.url}/models/movierec", timeout=10).json()[0]
    assert described["modelVersion"] == kserve_ts.version
    expected = batch_settings()
    assert {k: described[k] for k in expected} == expected
    assert requests.get(f"{kserve_ts.url}/ping", timeout=10).status_code == 200
    r = requests.post(f"{kserve_ts.url}/models", params={"url": f"movierec-{kserve_ts.version}.mar"}, timeout=10)
    assert r.status_code == 405
    metrics = requests.get(f"{kserve_ts.metrics_url}/metrics", timeout=10)
    assert metrics.status_code == 200 and "ts_inference_requests_total" in metrics.text


def _arrow_post(url: str, users: list, movies: list) -> requests.Response:
    """POST one Arrow body of (user_id, movie_id) asking for an Arrow answer."""
    body = request_body(pa.array(users), pa.array(movies))
    headers = {"Content-Type": ARROW_STREAM, "Accept": ARROW_STREAM}
    return requests.post(url, data=body, headers=headers, timeout=60)


@pytest.mark.integration
def test_an_arrow_body_passes_the_native_v1_route(kserve_ts, references):
    """Content-Type application/vnd.apache.arrow.stream reaches our handler through /v1/models/movierec:predict."""
    art, rec = references[kserve_ts.version]
    urows, mrows, instances = _pairs(art, np.random.default_rng(13), 2000)
    users, movies = [i["user_id"] for i in instances], [i["movie_id"] for i in instances]
    url = f"{kserve_ts.url}/v1/models/movierec:predict"
    r = _arrow_post(url, users, movies)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith(ARROW_STREAM)
    ratings, errors = read_answer(r.content, len(instances), 1)
    assert errors.null_count == len(instances)
    assert np.abs(ratings - rec.predict_exact(urows, mrows)).max() < 1e-4
    as_json = requests.post(url, json={"instances": instances}, timeout=60).json()["predictions"]
    assert ratings.tolist() == [p["rating"] for p in as_json]


@pytest.mark.integration
def test_movierec_score_over_the_v1_route_of_the_batch_layout(kserve_batch, references, tmp_path):
    """score_csv(route="v1", manage=False) against the --batch layout: both protocols, same file, in-process ratings."""
    art, rec = references["1.0"]
    urows, mrows, instances = _pairs(art, np.random.default_rng(17), 3000)
    with open(tmp_path / "in.csv", "w", encoding="utf-8") as f:
        f.write("user_id,movie_id\n")
        f.writelines(f"{i['user_id']},{i['movie_id']}\n" for i in instances[:5])
        f.write(f"99999,{instances[5]['movie_id']}\n")
        f.writelines(f"{i['user_id']},{i['movie_id']}\n" for i in instances[6:])
    # No key file: the KServe config has token auth off, as behind the wrapper.
    with MovieRecClient(kserve_batch.url, kserve_batch.url, tmp_path / "no-key.json") as client:
        for protocol in ("arrow", "json"):
            summary = score_csv(
                client,
                tmp_path / "in.csv",
                tmp_path / f"{protocol}.csv",
                manage=False,
                route="v1",
                protocol=protocol,
                chunk_size=700,
                concurrency=3,
                progress=False,
            )
            assert summary.rows_scored == 3000 and summary.rows_with_errors == 1
    assert (tmp_path / "arrow.csv").read_bytes() == (tmp_path / "json.csv").read_bytes()
    # Every chunk of both jobs, and each job's cold-start probe, went through the v1 route (the /predictions
    # route is open on this port too): 2 x (5 chunks + 1 probe).
    posts = [line for line in _access_log(kserve_batch, 12) if '"POST ' in line]
    assert len(posts) == 12 and all('"POST /v1/models/movierec-batch:predict ' in line for line in posts)
    with open(tmp_path / "arrow.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert "99999" in rows[5]["error"]
    good = [i for i in range(3000) if i != 5]
    got = np.array([float(rows[i]["rating"]) for i in good])
    assert np.abs(got - rec.predict_exact(urows[good], mrows[good])).max() < 1e-4


def _access_log(ts: KServeTorchServe, posts: int, timeout: float = 10) -> list[str]:
    """The access log once it shows at least `posts` POSTs (log4j writes it a little after the answers)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = (ts.root / "logs" / "access_log.log").read_text().splitlines()
        if sum('"POST ' in line for line in lines) >= posts or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)
