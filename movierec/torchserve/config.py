"""What one TorchServe instance is: its ports, its rendered config.properties and its snapshots."""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from movierec import defaults
from movierec.paths import CONFIG_PROPERTIES
from movierec.torchserve.errors import ServeError
from movierec.torchserve.properties import read_properties, write_properties

DEFAULT_CONFIG = CONFIG_PROPERTIES
HOST = defaults.HOST
LOG4J_FLAG = "-Dlog4j.configurationFile="
# allowed_urls that no URL matches: nothing is ever downloaded or copied into a store.
NO_URL = "^$"


@dataclass(frozen=True)
class Ports:
    """The five loopback ports one TorchServe instance listens on."""

    inference: int = defaults.INFERENCE_PORT
    management: int = defaults.MANAGEMENT_PORT
    metrics: int = defaults.METRICS_PORT
    grpc_inference: int = defaults.GRPC_INFERENCE_PORT
    grpc_management: int = defaults.GRPC_MANAGEMENT_PORT

    @classmethod
    def free(cls) -> Ports:
        """Five currently free loopback ports, for tests running side by side."""
        return cls(*free_ports(5))


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


def parse_models(spec: str | None) -> list[str]:
    """Split "NAME=FILE.mar,FILE2.mar" into entries naming archives in the model store."""
    return [part.strip() for part in (spec or "").split(",") if part.strip()]


def latest_snapshot(run_dir: Path) -> Path | None:
    """The newest snapshot TorchServe wrote under RUN_DIR/logs/config, if any."""
    config_dir = Path(run_dir) / "logs" / "config"
    # Names start with a yyyyMMddHHmmssSSS timestamp, so the lexical maximum is the newest.
    found = [p for p in config_dir.glob("*.cfg") if p.name.endswith(("-snapshot.cfg", "-shutdown.cfg", "-startup.cfg"))]
    return max(found, key=lambda p: p.name) if found else None


def snapshot_models(snapshot: str) -> dict[str, Any]:
    """The "models" of a model_snapshot JSON value (name -> version -> settings)."""
    return json.loads(snapshot).get("models", {})


def workflow_store(run_dir: Path) -> Path:
    """An empty directory that TorchServe takes as its workflow store (nothing is ever put there)."""
    path = Path(run_dir) / "workflow_store"
    path.mkdir(parents=True, exist_ok=True)
    return path


def render_config(config: Path, run_dir: Path, model_store: Path, ports: Ports, model_snapshot: str) -> Path:
    """Write RUN_DIR/config.properties: the base config with this instance's paths, ports and models."""
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
            "workflow_store": str(workflow_store(run_dir)),
            # The model API is off; this only narrows what a workflow archive could name.
            "allowed_urls": NO_URL,
            # Every registration is in this snapshot (see registry.py); load_models would be ignored.
            "model_snapshot": model_snapshot,
        }
    )
    if "vmargs" in props:
        props["vmargs"] = _absolute_log4j(props["vmargs"], config.parent)
    for ignored in ("load_models", "tsConfigFile", "models"):
        props.pop(ignored, None)
    out = run_dir / "config.properties"
    write_properties(out, props, f"Rendered by movierec-serve from {config.name}; edit that file.")
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
