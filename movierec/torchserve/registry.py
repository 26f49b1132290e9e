"""Which archives an instance serves: the model_snapshot that `movierec-serve start` renders from the model store.

The model API is off (config.properties), so nothing can be registered over HTTP or gRPC. Every
registration comes from this snapshot, built only from .mar files that are regular files directly
inside the model store: no symlinks, directories or paths elsewhere. A previous snapshot of the
same instance contributes its default versions and worker counts, never archives of its own.
"""

from __future__ import annotations

import json
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from movierec.defaults import BATCH_MODEL, MODEL
from movierec.torchserve.archive import BATCH_KEYS, read_manifest
from movierec.torchserve.errors import ServeError

# Bulk jobs (`movierec score`, `recommend-all`) get their own registration of each archive of these
# models, so their big requests never queue behind latency traffic. It starts with 0 workers: a job
# scales it up (PUT min_worker, which works with the model API off) and back down.
BATCH_MODELS = {MODEL: BATCH_MODEL}
# Its batching: one big request per handler call, answered as soon as it arrives.
BATCH_SETTINGS = {"batchSize": 1, "maxBatchDelay": 1}
# What TorchServe uses when an archive's model-config YAML leaves a key out (default_workers_per_model=1).
DEFAULTS = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 1, "maxBatchDelay": 100, "responseTimeout": 120}
# What a restart carries over from the previous snapshot: only what the management API changes at
# runtime (scaling). Batching comes from the archive, so a rebuilt one (make mar BATCH_SIZE=1) takes effect.
SCALED = ("minWorkers", "maxWorkers")
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.mar$")


@dataclass(frozen=True)
class Archive:
    """One checked .mar in the model store: its file name, model name, version and settings."""

    file: str
    name: str
    version: str
    settings: dict[str, int]


def check_archive(model_store: Path, file_name: str) -> Path:
    """The path of file_name if it is a regular .mar file directly inside model_store; else ServeError."""
    store = Path(model_store).resolve()
    if not _FILE_RE.match(file_name) or ".." in file_name:
        raise ServeError(f"{file_name!r} is not a plain .mar file name in {store}")
    path = store / file_name
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        raise ServeError(f"{file_name} is not in the model store {store}") from None
    # A symlink could lead anywhere and a directory is loaded as an unpacked archive: both are refused.
    if stat.S_ISLNK(mode) or not stat.S_ISREG(mode):
        raise ServeError(f"{path} is not a regular file (a symlink or directory is never registered)")
    if path.resolve().parent != store:
        raise ServeError(f"{path} resolves outside the model store {store}")
    return path


def read_archive(model_store: Path, file_name: str) -> Archive:
    """Check and read one archive: manifest name and version, and its model-config YAML settings."""
    path = check_archive(model_store, file_name)
    try:
        with zipfile.ZipFile(path) as mar:
            manifest = read_manifest(mar)
            config_name = manifest.get("configFile")
            config = (yaml.safe_load(mar.read(config_name)) or {}) if config_name else {}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, yaml.YAMLError) as exc:
        raise ServeError(f"{path} is not a readable model archive: {exc}") from None
    settings = {key: int(config.get(key, DEFAULTS[key])) for key in BATCH_KEYS}
    return Archive(file_name, manifest["modelName"], str(manifest["modelVersion"]), settings)


def store_files(model_store: Path) -> list[str]:
    """The names of every .mar in the store, in order, each through check_archive: one that fails stops the start."""
    store = Path(model_store)
    names = sorted(p.name for p in store.iterdir() if p.name.endswith(".mar"))
    for name in names:
        check_archive(store, name)
    return names


def plan_models(
    archives: list[Archive], previous: dict[str, Any] | None = None, names: dict[str, str] | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """The snapshot's models: each archive under its model name, plus the bulk registrations.

    names maps an archive file to the model name to serve it under ("NAME=FILE.mar"). previous (the
    "models" of an earlier snapshot) keeps default versions and worker counts of versions still in the store.
    Otherwise the first archive of a model (file-name order, or the order given) is its default.
    """
    previous, names = previous or {}, names or {}
    models: dict[str, dict[str, dict[str, Any]]] = {}
    for archive in archives:
        name = names.get(archive.file, archive.name)
        versions = models.setdefault(name, {})
        if archive.version in versions:
            raise ServeError(f"{archive.file}: {name} version {archive.version} is in the store twice")
        before = previous.get(name, {}).get(archive.version, {})
        entry = {**archive.settings, **{k: before[k] for k in SCALED if k in before}}
        versions[archive.version] = {"marName": archive.file, "defaultVersion": False, **entry}
    for name, versions in models.items():
        default = _default_version(versions, previous.get(name, {}))
        versions[default]["defaultVersion"] = True
    for name, batch_name in BATCH_MODELS.items():
        if name in models:
            models[batch_name] = {
                version: {**entry, **BATCH_SETTINGS, "minWorkers": 0, "maxWorkers": 0}
                for version, entry in models[name].items()
            }
    return models


def _default_version(versions: dict[str, dict[str, Any]], previous: dict[str, dict[str, Any]]) -> str:
    """The previous default if it is still served, else the first version."""
    for version, entry in previous.items():
        if entry.get("defaultVersion") and version in versions:
            return version
    return next(iter(versions))


def snapshot_json(models: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The model_snapshot value TorchServe restores at start."""
    return json.dumps({"name": "startup.cfg", "modelCount": len(models), "models": models}, separators=(",", ":"))
