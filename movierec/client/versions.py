"""Version management: listing, promotion with a remembered previous default, rollback."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from movierec.client.api import ConfigError, MovieRecClient, archive_name, check_version
from movierec.client.settings import STATE_FILE_NAME

HISTORY_LIMIT = 20


@dataclass
class VersionInfo:
    """One registered version as the management API describes it."""

    version: str
    is_default: bool
    workers: int
    min_workers: int
    max_workers: int
    batch_size: int
    max_batch_delay: int
    url: str

    @classmethod
    def from_description(cls, entry: dict[str, Any], default: str) -> VersionInfo:
        """Build from one item of GET /models/{name}/all."""
        return cls(
            version=entry["modelVersion"],
            is_default=entry["modelVersion"] == default,
            workers=len(entry.get("workers", [])),
            min_workers=entry.get("minWorkers", 0),
            max_workers=entry.get("maxWorkers", 0),
            batch_size=entry.get("batchSize", 0),
            max_batch_delay=entry.get("maxBatchDelay", 0),
            url=entry.get("modelUrl", ""),
        )


def list_versions(client: MovieRecClient, model: str | None = None) -> list[VersionInfo]:
    """Every registered version of a model, the default flagged."""
    default = client.default_version(model)
    return [VersionInfo.from_description(e, default) for e in client.describe(model, "all")]


def format_versions(model: str, infos: list[VersionInfo]) -> str:
    """A text table of versions."""
    lines = [f"{'':2}{'version':<12}{'workers':>8}{'min':>5}{'max':>5}{'batch':>7}{'delay_ms':>10}  archive"]
    for i in infos:
        mark = "* " if i.is_default else "  "
        lines.append(
            f"{mark}{i.version:<12}{i.workers:>8}{i.min_workers:>5}{i.max_workers:>5}"
            f"{i.batch_size:>7}{i.max_batch_delay:>10}  {i.url}"
        )
    lines.append(f"(* = default of {model})")
    return "\n".join(lines)


def state_path(client: MovieRecClient, state_file: str | os.PathLike[str] | None = None) -> Path:
    """The A/B state file: given, or ab_state.json next to the key file."""
    return Path(state_file) if state_file else client.endpoints.key_file.parent / STATE_FILE_NAME


def load_state(path: Path) -> dict[str, Any]:
    """Read the state file; an absent file is an empty state."""
    if not path.exists():
        return {}
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read A/B state file {path}: {exc}") from exc


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write the state file atomically, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(orjson.dumps(state, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    os.replace(tmp, path)


def promote(
    client: MovieRecClient, version: str, *, model: str | None = None, state_file: str | os.PathLike[str] | None = None
) -> str:
    """Make `version` the default and remember the previous one; return a message."""
    model = model or client.model
    check_version(version)
    registered = client.versions(model)
    if version not in registered:
        raise ConfigError(
            f"{model} has no version {version} (registered: {', '.join(registered)}); "
            f"put {archive_name(version)} into the server's model store and run movierec-serve reload first"
        )
    previous = client.default_version(model)
    if previous == version:
        return f"{version} is already the default of {model}; nothing changed"
    client.set_default(version, model=model)
    path = state_path(client, state_file)
    state = load_state(path)
    entry = state.setdefault(model, {"history": []})
    entry["history"] = (entry.get("history", []) + [previous])[-HISTORY_LIMIT:]
    entry["default"] = version
    entry["changed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    save_state(path, state)
    return f"promoted {model} {version} to default (was {previous}; rollback restores it)"


def rollback(
    client: MovieRecClient, *, model: str | None = None, state_file: str | os.PathLike[str] | None = None
) -> str:
    """Restore the default that the last promotion replaced; return a message."""
    model = model or client.model
    path = state_path(client, state_file)
    state = load_state(path)
    history = state.get(model, {}).get("history", [])
    if not history:
        raise ConfigError(f"nothing to roll back: {path} records no earlier default of {model}")
    previous = history[-1]
    registered = client.versions(model)
    if previous not in registered:
        raise ConfigError(
            f"cannot roll back to {previous}: it is no longer registered (registered: {', '.join(registered)})"
        )
    current = client.default_version(model)
    if current != previous:
        client.set_default(previous, model=model)
    state[model]["history"] = history[:-1]
    state[model]["default"] = previous
    state[model]["changed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    save_state(path, state)
    if current == previous:
        return f"{previous} was already the default of {model}; dropped it from the rollback history"
    return f"rolled back {model} default from {current} to {previous}"
