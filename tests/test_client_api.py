"""Client settings, key file, error parsing, retry policy and version bookkeeping; no server needed."""

from __future__ import annotations

import functools
import shlex
import socket
from pathlib import Path

import orjson
import pytest

from movierec.client import versions
from movierec.client.api import (
    ConfigError,
    Endpoints,
    KeyFile,
    MovieRecClient,
    RecoveryTimeout,
    ServerError,
    ServerUnreachable,
    WorkerDied,
    archive_name,
    error_message,
    is_token_rejection,
    is_worker_death,
    recovering,
)


def test_endpoints_prefer_arguments_then_environment_then_defaults():
    env = {
        "MOVIEREC_INFERENCE_URL": "http://10.0.0.1:9080/",
        "MOVIEREC_MANAGEMENT_URL": "http://10.0.0.1:9081",
        "MOVIEREC_KEY_FILE": "other/key_file.json",
    }
    assert Endpoints.resolve(env={}) == Endpoints(
        "http://127.0.0.1:8080", "http://127.0.0.1:8081", Path("run/key_file.json")
    )
    from_env = Endpoints.resolve(env=env)
    assert from_env.inference_url == "http://10.0.0.1:9080" and str(from_env.key_file) == "other/key_file.json"
    given = Endpoints.resolve("http://h:1", None, "k.json", env=env)
    assert given.inference_url == "http://h:1" and given.management_url == "http://10.0.0.1:9081"
    assert str(given.key_file) == "k.json"


def test_key_file_is_read_lazily_and_reloaded(tmp_path):
    path = tmp_path / "key_file.json"
    keys = KeyFile(path)
    assert keys.key("inference") is None  # no file: token auth may be off
    path.write_bytes(orjson.dumps({"inference": {"key": "a", "expiration time": "x"}, "API": {"key": "z"}}))
    assert keys.key("inference") is None  # cached until a refusal asks for a reload
    keys.reload()
    assert keys.key("inference") == "a" and keys.key("API") == "z"
    path.write_text("{not json")
    keys.reload()
    with pytest.raises(ConfigError, match="cannot read key file"):
        keys.key("inference")


def test_error_message_prefers_our_error_then_torchserve_message():
    assert error_message(400, b'{"error": "unknown user_id 99999", "field": "user_id"}')[0] == "unknown user_id 99999"
    ts = b'{"code": 404, "type": "ModelNotFoundException", "message": "Model version: 9.0 does not exist"}'
    assert error_message(404, ts) == (
        "Model version: 9.0 does not exist",
        {"code": 404, "type": "ModelNotFoundException", "message": "Model version: 9.0 does not exist"},
    )
    assert error_message(502, b"<html>Bad Gateway</html>") == ("<html>Bad Gateway</html>", None)
    assert error_message(503, b"")[0] == "HTTP 503 with an empty body"
    assert len(error_message(500, b"x" * 5000)[0]) < 600


def test_token_rejection_is_told_apart_from_a_bad_request():
    refused = (
        b'{"code": 400, "type": "InvalidKeyException", '
        b'"message": "Token Authorization failed. Token either incorrect, expired, or not provided correctly"}'
    )
    assert is_token_rejection(400, refused)
    assert not is_token_rejection(400, b'{"error": "user_id is required"}')
    assert not is_token_rejection(404, refused)


def test_versions_become_safe_archive_names():
    assert archive_name("2.0") == "movierec-2.0.mar"
    for bad in ("../2.0", "2.0/../../x", "", "http://evil/x", "a b"):
        with pytest.raises(ConfigError):
            archive_name(bad)


def test_retry_policy_covers_503_and_idempotent_posts(tmp_path):
    client = MovieRecClient(key_file=tmp_path / "k.json", retries=4)
    retry = client.session.get_adapter("http://127.0.0.1:8080").max_retries
    assert retry.total == 4 and 503 in retry.status_forcelist
    assert {"POST", "PUT", "GET", "DELETE"} <= set(retry.allowed_methods)
    assert retry.read == 4 and retry.connect == 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_raises_a_clear_error(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    client = MovieRecClient(url, url, tmp_path / "k.json", retries=1, backoff_factor=0.01)
    with pytest.raises(ServerUnreachable, match=f"cannot reach {url}"):
        client.predict(196, 242)


class StubClient(MovieRecClient):
    """Management calls answered from memory, for the client-side rules around them."""

    def __init__(self, tmp_path, registered: list[str], default: str) -> None:
        super().__init__("http://127.0.0.1:9", "http://127.0.0.1:9", tmp_path / "key_file.json")
        self.registered, self.default, self.sent = registered, default, []

    def versions(self, model=None):
        return list(self.registered)

    def default_version(self, model=None):
        return self.default

    def set_default(self, version, *, model=None):
        self.sent.append(("set-default", version))
        self.default = version

    def _request(self, method, api, path, **kw):
        self.sent.append((method, path))
        return {"status": "ok"}


def test_promote_then_rollback_restores_the_previous_default(tmp_path):
    client = StubClient(tmp_path, ["1.0", "2.0", "3.0"], "1.0")
    assert "was 1.0" in versions.promote(client, "2.0")
    assert "was 2.0" in versions.promote(client, "3.0")
    state = orjson.loads((tmp_path / "ab_state.json").read_bytes())
    assert state["movierec"]["history"] == ["1.0", "2.0"] and state["movierec"]["default"] == "3.0"
    assert "already the default" in versions.promote(client, "3.0")
    assert versions.rollback(client) == "rolled back movierec default from 3.0 to 2.0"
    assert versions.rollback(client) == "rolled back movierec default from 2.0 to 1.0"
    assert client.default == "1.0"
    with pytest.raises(ConfigError, match="nothing to roll back"):
        versions.rollback(client)


def test_promote_refuses_an_unregistered_version(tmp_path):
    client = StubClient(tmp_path, ["1.0"], "1.0")
    with pytest.raises(ConfigError, match="has no version 2.0"):
        versions.promote(client, "2.0")
    assert client.sent == [] and not (tmp_path / "ab_state.json").exists()


def test_rollback_refuses_a_version_that_is_gone(tmp_path):
    client = StubClient(tmp_path, ["1.0", "2.0"], "1.0")
    versions.promote(client, "2.0", state_file=tmp_path / "state.json")
    client.registered = ["2.0"]
    with pytest.raises(ConfigError, match="no longer registered"):
        versions.rollback(client, state_file=tmp_path / "state.json")


def test_version_table_flags_the_default():
    described = [
        {"modelVersion": "1.0", "modelUrl": "movierec-1.0.mar", "minWorkers": 1, "maxWorkers": 1, "workers": [{}]},
        {"modelVersion": "2.0", "modelUrl": "movierec-2.0.mar", "batchSize": 8, "maxBatchDelay": 10},
    ]
    infos = [versions.VersionInfo.from_description(e, "2.0") for e in described]
    assert [i.is_default for i in infos] == [False, True] and infos[0].workers == 1
    table = versions.format_versions("movierec", infos)
    assert "* 2.0" in table and "  1.0" in table


def test_worker_death_is_told_apart_from_the_handlers_own_errors():
    """TorchServe's {"code","type","message"} 500/507 is a lost worker; the handler's {"error"} never is."""
    died = {"code": 500, "type": "InternalServerException", "message": "Worker died."}
    assert is_worker_death(500, died) and is_worker_death(507, {**died, "code": 507})
    assert not is_worker_death(507, {"error": "batch too big for memory", "model_version": "1.0"})
    assert not is_worker_death(500, {"error": "internal error", "model_version": "1.0"})
    assert not is_worker_death(503, {**died, "code": 503})  # overload: urllib3 retries it, briefly
    assert not is_worker_death(500, None) and not is_worker_death(400, died)


def test_recovering_resends_only_after_lost_workers_and_gives_up_in_time():
    """WorkerDied and dropped connections are sent again with growing waits; other errors raise at once."""
    waits: list[float] = []
    answers = iter([WorkerDied(500, "Worker died."), ServerUnreachable("reset"), "scored"])

    def call():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert recovering(call, sleep=waits.append) == "scored"
    assert waits == [0.5, 1.0]
    handler_507 = ServerError(507, "batch too big for memory")
    with pytest.raises(ServerError) as raised:
        recovering(lambda: (_ for _ in ()).throw(handler_507), sleep=waits.append)
    assert raised.value is handler_507 and len(waits) == 2

    def always_dies():
        raise WorkerDied(500, "Worker died.")

    with pytest.raises(RecoveryTimeout, match="Worker died.*after 2 s of retries"):
        recovering(always_dies, patience_s=2, sleep=lambda s: None)


def test_a_failed_job_names_the_exact_command_that_resumes_it(tmp_path, capsys, monkeypatch):
    """One line on stderr: the reason, then `movierec score ... --resume` to continue."""
    from movierec.client import batch
    from movierec.client.cli import main

    (tmp_path / "in file.csv").write_text("user_id,movie_id\n1,2\n")
    url = f"http://127.0.0.1:{free_port()}"
    argv = ["score", str(tmp_path / "in file.csv"), str(tmp_path / "out.csv"), "--no-manage", "--version", "1.0"]
    argv += ["--inference-url", url, "--management-url", url, "--key-file", str(tmp_path / "k.json")]
    argv += ["--retries", "0", "--quiet"]
    monkeypatch.setattr(batch, "recovering", functools.partial(recovering, patience_s=1))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot reach")
    assert err.rstrip().endswith("continue with: " + shlex.join(["movierec", *argv, "--resume"]))
