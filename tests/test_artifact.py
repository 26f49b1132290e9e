"""The artifact format: what train.py writes is what the data says, and every kind of damage is caught."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import zipfile
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

import train
from model.artifact import FILES, FORMAT, FORMAT_VERSION, ArtifactError, load_artifact, load_metadata
from model.data import load_ratings
from tests.conftest import TINY_TRAIN_ARGS


@pytest.fixture(scope="module")
def artifact(tiny_artifact):
    """The session's tiny artifact, loaded (read-only: copy the directory before damaging it)."""
    return load_artifact(tiny_artifact)


@pytest.fixture
def copy(tiny_artifact, tmp_path) -> Path:
    """A private copy of the tiny artifact that a test may corrupt."""
    return Path(shutil.copytree(tiny_artifact, tmp_path / "artifact"))


@pytest.fixture(scope="module")
def synth_ratings(synth_data) -> dict[str, set[str]]:
    """{user ID: set of movie IDs} read straight from the synthetic ratings.csv."""
    rated = defaultdict(set)
    with open(synth_data[0], newline="") as fh:
        for row in csv.DictReader(fh):
            rated[row["userId"]].add(row["movieId"])
    return dict(rated)


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def edit_metadata(folder: Path, change) -> None:
    """Apply change(meta) to metadata.json in place."""
    path = folder / "metadata.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def rehash(folder: Path, *names: str) -> None:
    """Make metadata.json's checksums agree with the files as they are now."""

    def change(meta):
        for name in names:
            meta["files"][name] = sha256(folder / name)

    edit_metadata(folder, change)


def load_error(folder: Path) -> str:
    """The ArtifactError message load_artifact raises for folder."""
    with pytest.raises(ArtifactError) as info:
        load_artifact(folder)
    return str(info.value)


def test_maps_match_the_data(artifact, synth_ratings):
    movies = set().union(*synth_ratings.values())
    assert set(artifact.users.ids) == set(synth_ratings)
    assert set(artifact.movies.ids) == movies
    assert len(artifact.users) == len(synth_ratings) and len(artifact.movies) == len(movies)
    assert artifact.module.state_dict()["u.weight"].shape[0] == len(artifact.users)
    assert artifact.module.state_dict()["m.weight"].shape[0] == len(artifact.movies)


def test_rated_csr_matches_the_data(artifact, synth_ratings):
    assert artifact.rated_indptr[0] == 0 and np.all(np.diff(artifact.rated_indptr) >= 0)
    assert artifact.rated_indptr[-1] == sum(len(m) for m in synth_ratings.values())
    for user, movies in synth_ratings.items():
        row = artifact.users.get(user)
        got = [artifact.movies.id_of(m) for m in artifact.rated_by(row)]
        assert len(got) == len(set(got))
        assert set(got) == movies, user


def test_titles_match_movies_csv(artifact, synth_data):
    with open(synth_data[1], newline="") as fh:
        titles = {row["movieId"]: row["title"] for row in csv.DictReader(fh)}
    assert len(artifact.titles) == len(artifact.movies)
    for row, raw in enumerate(artifact.movies.ids):
        assert artifact.titles[row] == titles[raw]
    assert artifact.titles[artifact.movies.get(101)] == "Movie 101, The (1950)"  # the quoted comma survived


def test_metadata(artifact, synth_data):
    meta = artifact.metadata
    data = load_ratings(synth_data[0])
    ratings = data.frame["rating"]
    assert meta["format"] == FORMAT and meta["format_version"] == FORMAT_VERSION
    assert meta["rating_range"] == [float(ratings.min()), float(ratings.max())]
    counts = meta["counts"]
    assert counts["users"] == len(artifact.users) and counts["movies"] == len(artifact.movies)
    assert counts["ratings"] == len(data.frame) == counts["train"] + counts["val"]
    net = meta["net"]
    assert (net["n_users"], net["n_movies"]) == (len(artifact.users), len(artifact.movies))
    assert artifact.net.n_factors == artifact.module.state_dict()["u.weight"].shape[1]
    # Every training setting the fixture passed is recoverable from the artifact.
    args = train.parse_args(["--out", "unused", *TINY_TRAIN_ARGS])
    expected = {k: getattr(args, k) for k in asdict(train.TrainConfig())}
    expected["arch"] = train.TrainConfig().arch if args.arch is None else args.arch  # the ml100k recipe's
    expected["n_dot"] = train.FUSED_N_DOT if args.n_dot is None else args.n_dot  # the arch's default width
    assert meta["train"] == expected
    assert (meta["train"]["n_factors"], meta["train"]["nh"]) == (artifact.net.n_factors, artifact.net.nh)
    assert math.isfinite(meta["metrics"]["val_rmse"]) and meta["metrics"]["val_rmse"] > 0
    assert meta["data"]["fingerprint"] == data.fingerprint()
    assert set(meta["files"]) == set(FILES)
    assert load_metadata(artifact.path) == meta


def test_no_pickle_besides_torchscript(tiny_artifact):
    names = {p.name for p in tiny_artifact.iterdir()}
    assert names == {*FILES, "metadata.json", "loss.png", "validation.csv"}
    for name in ("users.json", "movies.json", "titles.json", "metadata.json"):
        json.loads((tiny_artifact / name).read_text(encoding="utf-8"))
    with np.load(tiny_artifact / "rated.npz", allow_pickle=False) as rated:
        assert set(rated.files) == {"indptr", "indices"}
        assert rated["indptr"].dtype == np.int64 and rated["indices"].dtype == np.int32
    assert zipfile.is_zipfile(tiny_artifact / "model.pt")
    assert (tiny_artifact / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for path in tiny_artifact.iterdir():
        assert path.read_bytes()[:1] != b"\x80", f"{path.name} looks like a raw pickle"


def test_round_trip_of_a_copy(copy, artifact):
    again = load_artifact(copy)
    assert again.users.ids == artifact.users.ids and again.movies.ids == artifact.movies.ids
    assert again.titles == artifact.titles
    assert np.array_equal(again.rated_indptr, artifact.rated_indptr)
    assert np.array_equal(again.rated_indices, artifact.rated_indices)


@pytest.mark.parametrize("name", FILES)
def test_missing_file(copy, name):
    (copy / name).unlink()
    message = load_error(copy)
    assert name in message and "missing" in message


def test_corrupted_model(copy):
    data = bytearray((copy / "model.pt").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    (copy / "model.pt").write_bytes(bytes(data))
    message = load_error(copy)
    assert "model.pt" in message and "checksum" in message


def test_edited_users_json(copy):
    users = json.loads((copy / "users.json").read_text())
    users[0] = "intruder"
    (copy / "users.json").write_text(json.dumps(users))
    message = load_error(copy)
    assert "users.json" in message and "checksum" in message


def test_unloadable_model_with_matching_checksum(copy):
    (copy / "model.pt").write_bytes(b"not a zip at all")
    rehash(copy, "model.pt")
    message = load_error(copy)
    assert "model.pt" in message and "TorchScript" in message


@pytest.mark.parametrize("version", [4, 0, "1", None, True])
def test_unknown_format_version(copy, version):
    edit_metadata(copy, lambda meta: meta.update(format_version=version))
    message = load_error(copy)
    assert "metadata.json" in message and "format_version" in message


def test_wrong_format_name(copy):
    edit_metadata(copy, lambda meta: meta.update(format="something-else"))
    assert "not a movierec-artifact" in load_error(copy)


def test_metadata_missing(copy):
    (copy / "metadata.json").unlink()
    message = load_error(copy)
    assert "metadata.json" in message and "missing" in message


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe"])
def test_metadata_not_json(copy, text):
    (copy / "metadata.json").write_bytes(text.encode("latin-1"))
    message = load_error(copy)
    assert "metadata.json" in message and "JSON" in message


def test_metadata_missing_key(copy):
    edit_metadata(copy, lambda meta: meta.pop("net"))
    assert "'net'" in load_error(copy)


def test_not_a_directory(tmp_path):
    assert "not found" in load_error(tmp_path / "nowhere")


def test_maps_disagree_with_metadata(copy):
    users = json.loads((copy / "users.json").read_text())
    (copy / "users.json").write_text(json.dumps(users[:-1]))
    rehash(copy, "users.json")
    message = load_error(copy)
    assert "users" in message and "metadata" in message


def test_mismatched_model_shape_is_caught(copy):
    # Everything but the model agrees on one user fewer: maps, rated CSR, checksums, metadata.
    users = json.loads((copy / "users.json").read_text())
    (copy / "users.json").write_text(json.dumps(users[:-1]))
    with np.load(copy / "rated.npz", allow_pickle=False) as rated:
        indptr, indices = rated["indptr"][:-1], rated["indices"]
    np.savez(copy / "rated.npz", indptr=indptr, indices=indices[: indptr[-1]])
    rehash(copy, "users.json", "rated.npz")
    edit_metadata(copy, lambda meta: meta["net"].update(n_users=len(users) - 1))
    message = load_error(copy)
    assert "model.pt" in message and "u.weight" in message
    assert str(len(users)) in message and str(len(users) - 1) in message
