"""Build a movierec .mar and read the model config an archive carries.

`make mar`, the test fixtures and the benchmark all build archives here, so what is tested and
measured is what users deploy. `python -m movierec.torchserve.archive --help` for the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

from model.protocol import COLD_START_MODES, ServiceOptions
from movierec.defaults import MODEL as MODEL_NAME
from movierec.defaults import MODEL_STORE
from movierec.defaults import archive_file as archive_file  # movierec-VERSION.mar, re-exported for callers
from movierec.paths import HANDLER, MODEL_CONFIG, REPO

# The model-config.yaml keys TorchServe applies per model version (workers and dynamic batching).
BATCH_KEYS = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout")
MANIFEST = "MAR-INF/MANIFEST.json"


class ArchiveError(RuntimeError):
    """The archive could not be built."""


def build_mar(
    artifacts: str | Path,
    version: str,
    model_store: str | Path,
    model_config: Path = MODEL_CONFIG,
    cold_start: str | None = None,
    batch_size: int | None = None,
) -> Path:
    """Validate ARTIFACTS and write MODEL_STORE/movierec-VERSION.mar; return its path.

    cold_start ("error" or "fallback") overrides the model config's handler.cold_start for this archive,
    batch_size its batchSize (1: no dynamic batching, the lowest latency while few requests are in flight).
    """
    from model.artifact import files_of, load_artifact  # torch: only when building, not when reading archives

    artifacts, model_store = Path(artifacts), Path(model_store)
    artifact = load_artifact(artifacts)  # refuse a broken artifact before TorchServe ever sees it
    model_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mar-") as work:
        if cold_start is not None or batch_size is not None:
            model_config = _with_overrides(model_config, Path(work) / "model-config.yaml", cold_start, batch_size)
            if cold_start == "fallback" and artifact.cold_start is None:
                raise ArchiveError(
                    f"cold_start fallback: {artifacts} has no average user and movie (format v1); retrain it"
                )
        extra = Path(work) / "extra"
        # The handler imports `model` and reads `artifact/` beside itself in the unpacked archive.
        shutil.copytree(REPO / "model", extra / "model", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (extra / "artifact").mkdir()
        for name in (*files_of(artifact.metadata), "metadata.json"):
            shutil.copy2(artifacts / name, extra / "artifact" / name)
        cmd = [sys.executable, "-m", "model_archiver.model_packaging", "--model-name", MODEL_NAME]
        cmd += ["--version", version, "--handler", str(HANDLER), "--extra-files", str(extra)]
        cmd += ["--config-file", str(model_config), "--export-path", work, "--force"]
        # The archiver stages files in $TMPDIR/<model name>: two builds at once would share that folder.
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TMPDIR": work})
        if done.returncode != 0:
            raise ArchiveError(f"torch-model-archiver failed:\n{done.stdout}{done.stderr}")
        out = model_store / archive_file(version)
        shutil.move(Path(work) / f"{MODEL_NAME}.mar", out)
    return out


def _with_overrides(model_config: Path, out: Path, cold_start: str | None, batch_size: int | None) -> Path:
    """Write a copy of the model config with handler.cold_start and/or batchSize set; a bad value is a ValueError."""
    config = yaml.safe_load(model_config.read_text()) or {}
    changed = []
    if cold_start is not None:
        config["handler"] = {**(config.get("handler") or {}), "cold_start": cold_start}
        ServiceOptions.from_config(config["handler"])
        changed.append(f"handler.cold_start: {cold_start}")
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
        config["batchSize"] = batch_size
        changed.append(f"batchSize: {batch_size}")
    header = f"# {model_config.name} with {', '.join(changed)} (set by build_mar)\n"
    out.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return out


def load_model_config(archive: str | Path | None = None) -> dict:
    """The TorchServe and handler settings: handler/model-config.yaml, or the copy inside an archive."""
    if archive is None:
        return yaml.safe_load(MODEL_CONFIG.read_text()) or {}
    with zipfile.ZipFile(archive) as mar:
        name = read_manifest(mar).get("configFile")
        return (yaml.safe_load(mar.read(name)) or {}) if name else {}


def read_manifest(archive: str | Path | zipfile.ZipFile) -> dict:
    """The model section of an archive's MAR-INF/MANIFEST.json: modelName, modelVersion, configFile ..."""
    if isinstance(archive, zipfile.ZipFile):
        return json.loads(archive.read(MANIFEST))["model"]
    with zipfile.ZipFile(archive) as mar:
        return read_manifest(mar)


def batch_settings(config: dict | None = None) -> dict[str, int]:
    """The worker and batching settings of a model config (handler/model-config.yaml by default)."""
    config = load_model_config() if config is None else config
    return {key: int(config[key]) for key in BATCH_KEYS if key in config}


def main(argv: list[str] | None = None) -> int:
    """Build one archive from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, required=True, help="artifact directory written by train.py")
    parser.add_argument("--version", required=True, help="model version (also the archive's file name)")
    parser.add_argument("--model-store", type=Path, default=Path(MODEL_STORE), help="where the .mar goes")
    parser.add_argument(
        "--cold-start",
        choices=COLD_START_MODES,
        help="unknown IDs in this archive: error (404) or fallback (average user/movie); default: the model config's",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="requests per handler call (default: the model config's 32); 1 turns dynamic batching off, "
        "the lower latency while at most ~2 requests are in flight (README, Serving)",
    )
    args = parser.parse_args(argv)
    try:
        path = build_mar(
            args.artifacts, args.version, args.model_store, cold_start=args.cold_start, batch_size=args.batch_size
        )
        print(f"wrote {path}")
    except (ArchiveError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
