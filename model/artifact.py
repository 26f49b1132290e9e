"""The artifact directory train.py writes and the handler serves (format `movierec-artifact` v1).

    model.pt        TorchScript EmbeddingNet: forward(users int64[B], movies int64[B]) -> float32[B]
    users.json      ["196", "186", ...]   raw user IDs; position = embedding row
    movies.json     ["1", "2", ...]       raw movie IDs; position = embedding row
    titles.json     ["Toy Story (1995)", null, ...]   aligned with movies.json
    rated.npz       CSR of the movies each user rated: indptr int64[n_users+1], indices int32
    metadata.json   format, format_version, created_at, rating_range, counts, net, train,
                    metrics, data (source, fingerprint, duplicates_dropped), files (sha256 each)

JSON and NumPy only (loaded with allow_pickle=False): nothing a user hands us is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from model.index import IdIndex
from model.net import NetConfig

FORMAT = "movierec-artifact"
FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
DATA_FILES = ("users.json", "movies.json", "titles.json", "rated.npz")
FILES = (MODEL_FILE, *DATA_FILES)


class ArtifactError(ValueError):
    """An artifact directory that cannot be served, with the reason."""


@dataclass
class Artifact:
    """A loaded, validated artifact."""

    path: Path
    module: torch.jit.ScriptModule
    users: IdIndex
    movies: IdIndex
    titles: list[str | None]
    rated_indptr: np.ndarray
    rated_indices: np.ndarray
    metadata: dict

    @property
    def net(self) -> NetConfig:
        """The network config the model was trained with."""
        return NetConfig(**self.metadata["net"])

    def rated_by(self, user_row: int) -> np.ndarray:
        """Movie rows the user rated."""
        return self.rated_indices[self.rated_indptr[user_row] : self.rated_indptr[user_row + 1]]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def rated_csr(user_rows: np.ndarray, movie_rows: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Group (user, movie) rows into CSR arrays (indptr, indices) by user."""
    order = np.lexsort((movie_rows, user_rows))
    counts = np.bincount(user_rows, minlength=n_users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, movie_rows[order].astype(np.int32)


def save_artifact(
    out: str | os.PathLike,
    module: torch.jit.ScriptModule,
    users: IdIndex,
    movies: IdIndex,
    titles: list[str | None],
    rated: tuple[np.ndarray, np.ndarray],
    metadata: dict,
) -> Path:
    """Write every file, then metadata.json (last, with checksums) so a half-written dir never validates."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metadata.json").unlink(missing_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(module, str(out / MODEL_FILE))
    _write_json(out / "users.json", users.ids)
    _write_json(out / "movies.json", movies.ids)
    _write_json(out / "titles.json", titles)
    np.savez(out / "rated.npz", indptr=rated[0], indices=rated[1])
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        **metadata,
        "files": {name: _sha256(out / name) for name in FILES},
    }
    _write_json(out / "metadata.json", meta)
    return out


def load_metadata(path: str | os.PathLike) -> dict:
    """Read and check metadata.json: known format and version, required keys present."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: artifact directory not found")
    meta_path = path / "metadata.json"
    if not meta_path.exists():
        raise ArtifactError(f"{meta_path}: missing (not an artifact, or training did not finish)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{meta_path}: not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{meta_path}: not a {FORMAT} metadata file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{meta_path}: format_version {meta.get('format_version')!r} is not supported "
            f"(this code reads version {FORMAT_VERSION})"
        )
    for key in ("net", "rating_range", "files", "counts"):
        if key not in meta:
            raise ArtifactError(f"{meta_path}: missing key {key!r}")
    return meta


def load_artifact(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Artifact:
    """Load an artifact directory and validate all of it; ArtifactError names what is wrong."""
    path = Path(path)
    meta = load_metadata(path)
    for name in FILES:
        file = path / name
        if not file.exists():
            raise ArtifactError(f"{file}: missing")
        expected = meta["files"].get(name)
        if expected != _sha256(file):
            raise ArtifactError(f"{file}: checksum does not match metadata.json (corrupted or replaced)")
    try:
        users = IdIndex(json.loads((path / "users.json").read_text(encoding="utf-8")))
        movies = IdIndex(json.loads((path / "movies.json").read_text(encoding="utf-8")))
        titles = json.loads((path / "titles.json").read_text(encoding="utf-8"))
        with np.load(path / "rated.npz", allow_pickle=False) as rated:
            indptr, indices = rated["indptr"], rated["indices"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: unreadable index file: {exc}") from None
    net = meta["net"]
    if (len(users), len(movies)) != (net["n_users"], net["n_movies"]):
        raise ArtifactError(
            f"{path}: index maps have {len(users)} users / {len(movies)} movies but metadata says "
            f"{net['n_users']} / {net['n_movies']}"
        )
    if len(titles) != len(movies):
        raise ArtifactError(f"{path}/titles.json: {len(titles)} titles for {len(movies)} movies")
    if len(indptr) != len(users) + 1 or (len(indices) and (indices.min() < 0 or indices.max() >= len(movies))):
        raise ArtifactError(f"{path}/rated.npz: does not match the {len(users)} users / {len(movies)} movies")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path / MODEL_FILE), map_location=map_location)
    except RuntimeError as exc:
        raise ArtifactError(f"{path / MODEL_FILE}: not a loadable TorchScript module: {str(exc)[:200]}") from None
    state = module.state_dict()
    for key, rows in (("u.weight", len(users)), ("m.weight", len(movies))):
        if key not in state or state[key].shape[0] != rows:
            got = tuple(state[key].shape) if key in state else "absent"
            raise ArtifactError(f"{path / MODEL_FILE}: {key} has shape {got}, index map has {rows} rows")
    module.eval()
    return Artifact(path, module, users, movies, titles, indptr, indices, meta)
