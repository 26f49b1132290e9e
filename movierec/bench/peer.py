"""The benchmark's peer: the same artifact and the same service code behind FastAPI + uvicorn, 1 worker.

This is the comparison users make (issue 12), so the peer gets the care our server gets: 1 torch
thread, gc.freeze() after loading, no access log, the archive's `handler:` options, a Bearer token
check, and the same URL (/predictions/MODEL) and answers, byte for byte, as model.service.RatingService.
FastAPI and uvicorn are benchmark-only dependencies (requirements-bench.txt).

Run alone: python -m movierec.bench.peer --artifacts artifacts/v1.0 --port 8090 --model-version 1.0
"""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations at runtime,
# and Request is imported inside create_app (fastapi is a benchmark-only dependency).
import argparse
import gc
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from movierec.torchserve.config import HOST, free_ports

READY_TIMEOUT_S = 60.0


def build_service(artifacts: Path, model_version: str):
    """The RatingService the handler builds: its own initialize() on this artifact and handler/model-config.yaml.

    Running the handler's code (1 torch thread, `handler:` options, gc.freeze()) keeps the peer from drifting
    from what TorchServe serves.
    """
    from handler.movierec_handler import MovierecHandler
    from movierec.testing import LocalContext
    from movierec.torchserve.archive import load_model_config

    handler = MovierecHandler()
    with tempfile.TemporaryDirectory(prefix="movierec-peer-") as model_dir:
        # The handler reads MODEL_DIR/artifact, as laid out in an unpacked archive.
        os.symlink(Path(artifacts).resolve(), Path(model_dir) / "artifact")
        handler.initialize(LocalContext(model_dir, version=model_version, model_yaml_config=load_model_config()))
    return handler.service


def create_app(service, token: str):
    """A FastAPI app answering POST /predictions/{model} through `service`, and GET /ping."""
    from fastapi import FastAPI, Request, Response

    from model.protocol import error_reply, request_body

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    expected = f"Bearer {token}"

    @app.get("/ping")
    async def ping() -> dict:
        return {"status": "Healthy"}

    # async def: the service is CPU-bound, so a thread pool would only add a hop per request.
    @app.post("/predictions/{model}")
    async def predict(model: str, request: Request) -> Response:
        if request.headers.get("authorization") != expected:
            reply = error_reply(401, "missing or wrong Bearer token", service.model_version)
        else:
            body = request_body(await request.body(), request.headers.get("content-type"))
            reply = service.handle_batch([body])[0]
        return Response(content=reply.body, status_code=reply.status, media_type=reply.content_type)

    return app


def serve(artifacts: Path, port: int, model_version: str, token: str) -> None:
    """Load, freeze the GC heap, and serve on 127.0.0.1:port until killed."""
    import uvicorn

    app = create_app(build_service(artifacts, model_version), token)
    # The handler froze the heap after loading; freeze again so FastAPI's own objects are not scanned either.
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=HOST, port=port, workers=1, access_log=False, log_level="warning", loop="uvloop")


@dataclass
class Peer:
    """A running peer process, with the parts of torchserve.Server the load generators use."""

    process: subprocess.Popen
    port: int
    run_dir: Path
    key: str

    @property
    def pid(self) -> int:
        """The uvicorn process (1 worker: it serves in this process, no children)."""
        return self.process.pid

    @property
    def inference_url(self) -> str:
        """Base URL; predictions are under /predictions/MODEL as on TorchServe."""
        return f"http://{HOST}:{self.port}"

    def token(self, kind: str = "inference") -> str:
        """The Bearer token (one for everything)."""
        return self.key

    def auth(self, kind: str = "inference") -> dict[str, str]:
        """The Authorization header."""
        return {"Authorization": f"Bearer {self.key}"}

    def stop(self) -> None:
        """End the process (SIGTERM, then SIGKILL)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_peer(artifacts: Path, run_dir: Path, model_version: str, port: int | None = None) -> Peer:
    """Start the peer in its own process and wait until it answers /ping; its output goes to RUN_DIR/logs."""
    port = port or free_ports(1)[0]
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(16)
    cmd = [sys.executable, "-m", "movierec.bench.peer", "--artifacts", str(artifacts), "--port", str(port)]
    cmd += ["--model-version", model_version]
    log = open(run_dir / "logs" / "peer.log", "ab")  # noqa: SIM115 - the child holds it for its lifetime
    env = {**os.environ, "MOVIEREC_PEER_TOKEN": key}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    peer = Peer(proc, port, run_dir, key)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (run_dir / "logs" / "peer.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the FastAPI peer exited with {proc.returncode}:\n{tail}")
        try:
            if requests.get(f"{peer.inference_url}/ping", timeout=1).ok:
                return peer
        except requests.RequestException:
            pass
        time.sleep(0.2)
    peer.stop()
    raise RuntimeError(f"the FastAPI peer did not answer /ping within {READY_TIMEOUT_S:.0f} s")


def main(argv: list[str] | None = None) -> int:
    """Serve one artifact until killed; the token comes from MOVIEREC_PEER_TOKEN (kept off the command line)."""
    p = argparse.ArgumentParser(prog="python -m movierec.bench.peer", description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, required=True, help="artifact directory")
    p.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    p.add_argument("--model-version", default="1.0", help="model_version in answers (the archive's version)")
    args = p.parse_args(argv)
    token = os.environ.get("MOVIEREC_PEER_TOKEN")
    if not token:
        p.error("set MOVIEREC_PEER_TOKEN to the Bearer token clients must send")
    serve(args.artifacts, args.port, args.model_version, token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
