"""What one TorchServe instance is: its ports, its rendered config.properties and its snapshots."""

from __future__ import annotations

import json
import re
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path

from movierec.paths import CONFIG_PROPERTIES
from movierec.torchserve.errors import ServeError
from movierec.torchserve.properties import read_properties, write_properties

DEFAULT_CONFIG = CONFIG_PROPERTIES
HOST = "127.0.0.1"
LOG4J_FLAG = "-Dlog4j.configurationFile="


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
