"""The artifact directory train.py writes and the handler serves (format `movierec-artifact` v3).

    model.pt        TorchScript rating model (EmbeddingNet): forward(users int64[B], movies int64[B])
                    -> predicted ratings float32[B]
    ranker.pt       (v3) TorchScript ranker (model.ranking.DotRanker): forward(users, movies) -> scores
                    float32[B]; top-K lists are ranked by it
    users.json      ["196", "186", ...]   raw user IDs; position = embedding row
    movies.json     ["1", "2", ...]       raw movie IDs; position = embedding row
    titles.json     ["Toy Story (1995)", null, ...]   aligned with movies.json
    rated.npz       CSR of the movies each user rated: indptr int64[n_users+1], indices int32
    metadata.json   format, format_version, created_at, rating_range, counts, net, train,
                    metrics, data (source, fingerprint, duplicates_dropped), files (sha256 each),
                    cold_start (v2): the average user and movie, for IDs the model never saw:
                    {"method", "global_mean", "user": {"embedding": [n_factors floats], "bias"},
                     "movie": {"embedding", "bias"}}
                    ranker (v3): {"arch": "dot", "net": {n_users, n_movies, n_factors},
                     "train": the ranker's recipe, "plan": {users_per_step, epochs, lr} as run,
                     "loss": "softmax" (artifacts from before steps over users may say "sampled-softmax")}
Version 2 (no ranker) still loads and ranks by predicted rating; version 1 (no cold_start) also
loads, and cannot answer for unknown IDs.

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
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MODEL_FILE = "model.pt"
RANKER_FILE = "ranker.pt"
DATA_FILES = ("users.json", "movies.json", "titles.json", "rated.npz")
FILES = (MODEL_FILE, RANKER_FILE, *DATA_FILES)


def files_of(meta: dict) -> tuple[str, ...]:
    """The files an artifact of this metadata holds besides metadata.json (v1/v2 have no ranker)."""
    return FILES if meta.get("format_version", FORMAT_VERSION) >= 3 else (MODEL_FILE, *DATA_FILES)


class ArtifactError(ValueError):
    """An artifact directory that cannot be served, with the reason."""


@dataclass(frozen=True)
class ColdStart:
    """The average user and movie of a trained model, and its training mean rating (format v2)."""

    user_embedding: np.ndarray  # float32[n_factors]
    user_bias: float
    movie_embedding: np.ndarray  # float32[n_factors]
    movie_bias: float
    global_mean: float
    method: str = "mean"

    def to_dict(self) -> dict:
        """metadata.json's cold_start entry."""
        return {
            "method": self.method,
            "global_mean": self.global_mean,
            "user": {"embedding": self.user_embedding.tolist(), "bias": self.user_bias},
            "movie": {"embedding": self.movie_embedding.tolist(), "bias": self.movie_bias},
        }

    @classmethod
    def average_of(cls, state: dict[str, torch.Tensor], global_mean: float) -> ColdStart:
        """Plain means of a trained net's user rows and movie rows (embedding and bias).

        On ML-100K with 5% of users held out this beat the rating-count-weighted mean (README, "Cold start").
        """
        w = {k: v.detach().cpu().float() for k, v in state.items()}
        return cls(
            w["u.weight"].mean(0).numpy(),
            float(w["ub.weight"].mean()),
            w["m.weight"].mean(0).numpy(),
            float(w["mb.weight"].mean()),
            float(global_mean),
        )

    @classmethod
    def from_dict(cls, entry: object, n_factors: int) -> ColdStart:
        """Parse and check metadata.json's cold_start entry; ValueError names what is wrong."""
        try:
            sides = [
                (np.asarray(entry[k]["embedding"], dtype=np.float32), float(entry[k]["bias"]))
                for k in ("user", "movie")
            ]
            global_mean, method = float(entry["global_mean"]), str(entry.get("method", "mean"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"cold_start is malformed ({type(exc).__name__}: {exc})") from None
        for (embedding, bias), side in zip(sides, ("user", "movie"), strict=True):
            if embedding.shape != (n_factors,) or not np.isfinite(embedding).all() or not np.isfinite(bias):
                raise ValueError(f"cold_start.{side} must hold {n_factors} finite factors and a finite bias")
        if not np.isfinite(global_mean):
            raise ValueError("cold_start.global_mean must be finite")
        return cls(sides[0][0], sides[0][1], sides[1][0], sides[1][1], global_mean, method)


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
    ranker: torch.jit.ScriptModule | None = None  # None in a v1/v2 artifact: top-K ranks by rating

    @property
    def net(self) -> NetConfig:
        """The network config the model was trained with."""
        return NetConfig(**self.metadata["net"])

    @property
    def cold_start(self) -> ColdStart | None:
        """The average user and movie (None for a format v1 artifact, which predates them)."""
        entry = self.metadata.get("cold_start")
        return None if entry is None else ColdStart.from_dict(entry, self.net.n_factors)

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
    ranker: torch.jit.ScriptModule,
) -> Path:
    """Write every file, then metadata.json (last, with checksums) so a half-written dir never validates."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metadata.json").unlink(missing_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(module, str(out / MODEL_FILE))
        torch.jit.save(ranker, str(out / RANKER_FILE))
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
    version = meta.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{meta_path}: format_version {version!r} is not supported "
            f"(this code reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )
    required = ("net", "rating_range", "files", "counts") + (("cold_start",) if version >= 2 else ())
    required += ("ranker",) if version >= 3 else ()
    for key in required:
        if key not in meta:
            raise ArtifactError(f"{meta_path}: missing key {key!r}")
    return meta


def load_artifact(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Artifact:
    """Load an artifact directory and validate all of it; ArtifactError names what is wrong."""
    path = Path(path)
    meta = load_metadata(path)
    for name in files_of(meta):
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
    module = _load_module(path / MODEL_FILE, map_location, len(users), len(movies))
    ranker = None
    if RANKER_FILE in files_of(meta):
        ranker = _load_module(path / RANKER_FILE, map_location, len(users), len(movies))
    artifact = Artifact(path, module, users, movies, titles, indptr, indices, meta, ranker)
    try:
        artifact.cold_start  # noqa: B018 - parsed now so a bad entry fails the load, not a request
    except ValueError as exc:
        raise ArtifactError(f"{path}/metadata.json: {exc}") from None
    return artifact


def _load_module(file: Path, map_location: str | torch.device, n_users: int, n_movies: int) -> torch.jit.ScriptModule:
    """A TorchScript module whose user and movie tables match the index maps, in eval mode."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(file), map_location=map_location)
    except RuntimeError as exc:
        raise ArtifactError(f"{file}: not a loadable TorchScript module: {str(exc)[:200]}") from None
    state = module.state_dict()
    for key, rows in (("u.weight", n_users), ("m.weight", n_movies)):
        if key not in state or state[key].shape[0] != rows:
            got = tuple(state[key].shape) if key in state else "absent"
            raise ArtifactError(f"{file}: {key} has shape {got}, index map has {rows} rows")
    return module.eval()
