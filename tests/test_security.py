"""Nothing but regular .mar files in the model store can ever run as a model (README, "Security").

Each test offers a real TorchServe an archive whose handler writes a marker file as soon as it is
imported, in every form an attacker holding the management key could try, and checks the marker
never appears. Java reads the archives, so these need TorchServe's frontend; they use a tiny echo
model instead of a trained one.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from movierec import torchserve
from tests.conftest import needs, needs_java

pytestmark = [pytest.mark.integration, needs_java]

HANDLER = """
from pathlib import Path

Path({marker!r}).write_text("handler code ran")


def handle(data, context):
    return None if data is None else ["{{}}" for _ in data]
"""
GRPC_REGISTER = "/org.pytorch.serve.grpc.management.ManagementAPIsService/RegisterModel"


def archive(name: str, handler: Path, out: Path, fmt: str = "default") -> Path:
    """torch-model-archiver: model `name` 1.0 with `handler`, into out (a .mar, or a directory with no-archive)."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "model_archiver.model_packaging", "--model-name", name, "--version", "1.0"]
        + ["--handler", str(handler), "--export-path", str(out), "--archive-format", fmt, "--force"],
        check=True,
        capture_output=True,
    )
    return out / (name if fmt == "no-archive" else f"{name}.mar")


@pytest.fixture(scope="module")
def attack(tmp_path_factory) -> dict[str, Path]:
    """The marker path, an evil .mar and an evil unpacked archive directory, all outside any store."""
    root = tmp_path_factory.mktemp("attacker")
    marker = root / "MARKER"
    handler = root / "evil_handler.py"
    handler.write_text(HANDLER.format(marker=str(marker)))
    mar = archive("evil", handler, root / "mar")
    unpacked = archive("evil", handler, root / "dir", fmt="no-archive")
    war = root / "evil.war"
    shutil.copy(mar, war)
    return {"marker": marker, "mar": mar, "dir": unpacked, "war": war, "root": root}


@pytest.fixture(scope="module")
def served(tmp_path_factory, attack):
    """A TorchServe serving echo 1.0 from its own store, as movierec-serve starts it."""
    store = tmp_path_factory.mktemp("store")
    echo = tmp_path_factory.mktemp("echo") / "echo_handler.py"
    echo.write_text("def handle(data, context):\n    return None if data is None else ['{}' for _ in data]\n")
    shutil.move(archive("echo", echo, echo.parent / "out"), store / "echo-1.0.mar")
    run_dir = tmp_path_factory.mktemp("run")
    srv = torchserve.start(run_dir, store, None, torchserve.Ports.free(), timeout=90)
    yield srv
    torchserve.stop(run_dir)


@pytest.fixture(scope="module")
def web(attack):
    """A local HTTP server offering the evil archive, so an allowed http:// URL would really load it."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(attack["mar"].parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def assert_untouched(srv: torchserve.Server, attack: dict[str, Path]) -> None:
    """No marker, no new model, no worker besides echo's."""
    assert not attack["marker"].exists(), "the attacker's handler ran"
    assert srv.models() == ["echo"]
    assert not any(attack["root"].glob("**/MARKER"))


def test_model_registration_over_http_is_refused_in_every_form(served, attack, web):
    """POST /models answers 405 for a directory, a .mar outside the store, file://, http:// and '../'."""
    store = served.model_store
    (store / "link.mar").symlink_to(attack["mar"])  # a symlink an attacker managed to drop in the store
    try:
        urls = [
            str(attack["dir"]),
            str(attack["mar"]),
            f"file://{attack['mar']}",
            f"file://{attack['dir']}",
            f"{web}/evil.mar",
            f"../{attack['root'].name}/mar/evil.mar",
            "link.mar",
            "echo-1.0.mar",  # even a legitimate archive in the store
        ]
        for url in urls:
            params = {"url": url, "model_name": "evil", "initial_workers": 1, "synchronous": "true"}
            answer = requests.post(f"{served.management_url}/models", params=params, headers=served.auth("management"))
            assert answer.status_code == 405, (url, answer.status_code, answer.text)
        gone = requests.delete(f"{served.management_url}/models/echo/1.0", headers=served.auth("management"))
        assert gone.status_code == 405
    finally:
        (store / "link.mar").unlink()
    assert_untouched(served, attack)


def test_workflow_registration_is_refused_in_every_form(served, attack, web):
    """POST /workflows (not gated by the model API in 0.12) finds nothing: empty store, no URL allowed."""
    urls = [
        str(attack["dir"]),
        str(attack["war"]),
        f"file://{attack['war']}",
        f"file://{attack['dir']}",
        f"{web}/evil.mar",
        f"../{attack['root'].name}/evil.war",
        "evil.war",
        "echo-1.0.mar",
    ]
    for url in urls:
        params = {"url": url, "workflow_name": "evil"}
        answer = requests.post(f"{served.management_url}/workflows", params=params, headers=served.auth("management"))
        assert answer.status_code == 404, (url, answer.status_code, answer.text)
        assert answer.json()["type"] == "WorkflowNotFoundException", answer.text
    listed = requests.get(f"{served.management_url}/workflows", headers=served.auth("management"))
    assert listed.json().get("workflows", []) == []
    assert_untouched(served, attack)


def grpc_frame(*fields: tuple[int, str | int]) -> bytes:
    """One length-prefixed gRPC message: a protobuf of string and varint (< 128) fields, written by hand."""
    body = b""
    for number, value in fields:
        if isinstance(value, str):
            raw = value.encode()
            assert len(raw) < 128
            body += bytes([number << 3 | 2, len(raw)]) + raw
        else:
            body += bytes([number << 3, value])
    return b"\x00" + struct.pack(">I", len(body)) + body


def curl_speaks_http2() -> bool:
    """Whether the installed curl can send gRPC (HTTP/2 with prior knowledge)."""
    return "HTTP2" in subprocess.run(["curl", "-V"], capture_output=True, text=True).stdout


@needs("curl")
def test_grpc_register_model_is_refused(served, attack, tmp_path):
    """gRPC RegisterModel (management port 7071's service) answers PERMISSION_DENIED: the model API is off.

    The call is a hand-made protobuf sent by curl over HTTP/2 (tests/test_grpc.py makes the same one with grpcio).
    """
    if not curl_speaks_http2():
        pytest.skip("grpcio is not installed and this curl cannot speak HTTP/2")
    key = json.loads(served.key_file.read_text())["management"]["key"]
    for url in (str(attack["dir"]), str(attack["mar"]), "echo-1.0.mar"):
        # RegisterModelRequest: model_name = 5, url = 9, initial_workers = 3, synchronous = 8
        request = tmp_path / "register.bin"
        request.write_bytes(grpc_frame((9, url), (5, "evil"), (3, 1), (8, 1)))
        done = subprocess.run(
            ["curl", "-sS", "-D", "-", "--http2-prior-knowledge", "-H", "content-type: application/grpc"]
            + ["-H", "te: trailers", "-H", f"authorization: Bearer {key}", "--data-binary", f"@{request}"]
            + [f"http://127.0.0.1:{served.ports.grpc_management}{GRPC_REGISTER}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "grpc-status: 7" in done.stdout, done.stdout + done.stderr  # PERMISSION_DENIED
        assert "Model API disabled" in done.stdout
    assert_untouched(served, attack)


def test_start_refuses_a_symlink_or_directory_in_the_store(attack, tmp_path):
    """movierec-serve start checks every .mar entry first: a symlink leading out or a directory stops it."""
    for name, plant in (
        ("link.mar", lambda p: p.symlink_to(attack["mar"])),
        ("dir.mar", lambda p: shutil.copytree(attack["dir"], p)),
    ):
        store = tmp_path / f"store-{name}"
        store.mkdir()
        plant(store / name)
        with pytest.raises(torchserve.ServeError, match=f"{name} is not a regular file"):
            torchserve.start(tmp_path / f"run-{name}", store, None, torchserve.Ports.free(), timeout=60)
        with pytest.raises(torchserve.ServeError, match="not a regular file"):
            torchserve.start(tmp_path / f"run2-{name}", store, [f"evil={name}"], torchserve.Ports.free(), timeout=60)
    for entry in (str(attack["mar"]), f"../{attack['root'].name}/mar/evil.mar"):
        with pytest.raises(torchserve.ServeError, match="plain .mar file name"):
            torchserve.start(tmp_path / "run3", tmp_path / "store-link.mar", [entry], torchserve.Ports.free())
    assert not attack["marker"].exists()
