"""Check store archives outside the running server before a start or reload registers them.

An archive TorchServe cannot load (a corrupted model.pt, a bad model-config, a handler that does not
parse) would otherwise be found only after a restart, with the serving versions already gone. So each
new or changed .mar is checked in a child process (`python -I`, running this module's main on FILE...)
under a deadline: its manifest, its model-config.yaml, that its handler parses (compiled, never
imported or run), and for a movierec archive its artifact, loaded and checked with OUR model/ code
(checksums, shapes, the TorchScript parity check of model.core.Recommender) and its handler options
(model.protocol.ServiceOptions). Nothing from the archive is imported; model.pt and ranker.pt are
TorchScript, loaded as data.

RUN_DIR/archives.json remembers what passed (file -> sha256, so an unchanged archive is not checked
again) and what was refused (file, reason, time), which `movierec-serve status` shows.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from movierec.defaults import MODEL

STATE_FILE = "archives.json"
# All archives of one start or reload: a reload that refuses one answers within a minute.
CHECK_S = 50.0
ARTIFACT_DIR = "artifact"
UNFINISHED = "the check did not finish"  # a refusal for lack of time, not a verdict: checked again next time
# The child runs isolated (-I: no PYTHON* variables, no user site, not the current directory) and
# imports movierec and model from where this file's copy lives, installed or not.
_CHILD = (
    f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r}); "
    "from movierec.torchserve.vetting import main; sys.exit(main(sys.argv[1:]))"
)


@dataclass(frozen=True)
class Refusal:
    """An archive that failed its check: file name, one-line reason, when, and the content it had.

    A final refusal holds until the file changes or leaves the store; a check that ran out of time is tried again.
    """

    file: str
    reason: str
    time: str
    sha256: str
    final: bool = True


def sha256(path: Path) -> str:
    """The archive's content digest."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_state(run_dir: Path) -> dict:
    """RUN_DIR/archives.json: {"accepted": {file: sha256}, "refused": [Refusal, ...]} (empty when absent)."""
    try:
        state = json.loads((Path(run_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        state = {}
    return {"accepted": dict(state.get("accepted", {})), "refused": list(state.get("refused", []))}


def refusals(run_dir: Path) -> list[Refusal]:
    """The archives the last checks in RUN_DIR refused."""
    return [Refusal(**entry) for entry in read_state(run_dir)["refused"]]


def vet(run_dir: Path, store: Path, files: list[str], deadline_s: float = CHECK_S) -> dict[str, str]:
    """Check each new or changed archive of `files` (already through registry.check_archive); file -> reason refused.

    Archives that passed or were refused (finally) before with the same content are not checked again.
    The result is recorded in RUN_DIR/archives.json; archives no longer in `files` are forgotten.
    """
    run_dir, store = Path(run_dir), Path(store)
    state = read_state(run_dir)
    digests = {file: sha256(store / file) for file in files}
    settled = {e["file"] for e in state["refused"] if e.get("final", True) and digests.get(e["file"]) == e["sha256"]}
    todo = [file for file in files if state["accepted"].get(file) != digests[file] and file not in settled]
    refused = _check(store, todo, deadline_s) if todo else {}
    now = datetime.now(UTC).isoformat(timespec="seconds")
    accepted = {f: d for f, d in digests.items() if f not in refused and (f in todo or f in state["accepted"])}
    kept = [entry for entry in state["refused"] if entry["file"] in settled]
    kept += [asdict(Refusal(f, why, now, digests[f], not why.startswith(UNFINISHED))) for f, why in refused.items()]
    _write_state(run_dir, {"accepted": accepted, "refused": kept})
    return {entry["file"]: entry["reason"] for entry in kept}


def refuse(run_dir: Path, files: list[str], reason: str) -> None:
    """Record archives that passed the checks as refused after all (TorchServe could not load them)."""
    state = read_state(run_dir)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    refused = [entry for entry in state["refused"] if entry["file"] not in files]
    refused += [asdict(Refusal(f, reason, now, state["accepted"].pop(f, ""))) for f in files]
    _write_state(run_dir, {"accepted": state["accepted"], "refused": refused})


def _write_state(run_dir: Path, state: dict) -> None:
    """Replace RUN_DIR/archives.json in one step."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(run_dir / STATE_FILE)


def _check(store: Path, files: list[str], deadline_s: float) -> dict[str, str]:
    """Run the checker child over `files`; file -> reason for each refused one.

    A child that crashes or hangs is blamed on the archive it was checking, and the rest are checked
    by a new child while time is left.
    """
    deadline = time.monotonic() + deadline_s
    refused: dict[str, str] = {}
    pending = list(files)
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            refused.update({f: f"{UNFINISHED} within {deadline_s:.0f} s" for f in pending})
            break
        cmd = [sys.executable, "-I", "-c", _CHILD, *(str(store / f) for f in pending)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=left, cwd=store, check=False)
            out, failure = done.stdout, f"the check crashed (exit status {done.returncode})"
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            failure = f"{UNFINISHED} within {deadline_s:.0f} s"
        answered = set()
        for line in out.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # not one of the child's answers
            answered.add(entry["file"])
            if entry.get("reason"):
                refused[entry["file"]] = entry["reason"]
        pending = [f for f in pending if f not in answered]
        if pending:  # the child died or ran out of time on the first unanswered archive
            refused[pending.pop(0)] = failure
    return refused


def check_archive_content(path: Path) -> None:
    """Raise with a one-line reason if TorchServe could not load the archive at `path` (runs in the child)."""
    import yaml

    from model.protocol import ServiceOptions
    from movierec.torchserve.archive import read_manifest

    with zipfile.ZipFile(path) as mar:
        names = set(mar.namelist())
        manifest = read_manifest(mar)
        for key in ("modelName", "modelVersion"):
            if not manifest.get(key):
                raise ValueError(f"the manifest has no {key}")
        config_name = manifest.get("configFile")
        config = (yaml.safe_load(mar.read(config_name)) or {}) if config_name else {}
        if not isinstance(config, dict):
            raise ValueError(f"{config_name} is not a mapping")
        handler = str(manifest.get("handler", "")).split(":")[0]
        if handler.endswith(".py"):
            if handler not in names:
                raise ValueError(f"the handler {handler} is not in the archive")
            compile(mar.read(handler), handler, "exec")  # parsed only: nothing of the archive runs here
        serialized = manifest.get("serializedFile")
        if serialized and serialized not in names:
            raise ValueError(f"the serialized file {serialized} is not in the archive")
        if manifest["modelName"] != MODEL and f"{ARTIFACT_DIR}/metadata.json" not in names:
            return  # not a movierec archive: the checks above are all that apply
        options = ServiceOptions.from_config(config.get("handler"))
        with tempfile.TemporaryDirectory(prefix="vet-") as work:
            _check_artifact(mar, Path(work), options.min_movie_ratings)


def _check_artifact(mar: zipfile.ZipFile, work: Path, min_movie_ratings: int) -> None:
    """Unpack the archive's artifact/ (flat files only) and load it as the handler would."""
    from model.artifact import ArtifactError, load_artifact
    from model.core import Recommender

    target = work / ARTIFACT_DIR
    target.mkdir()
    for info in mar.infolist():
        parts = PurePosixPath(info.filename).parts
        if len(parts) == 2 and parts[0] == ARTIFACT_DIR and not info.is_dir():
            (target / parts[1]).write_bytes(mar.read(info))
    try:
        Recommender(load_artifact(target), min_movie_ratings=min_movie_ratings)
    except ArtifactError as exc:
        raise ArtifactError(str(exc).replace(str(work) + "/", "")) from None


def main(argv: list[str] | None = None) -> int:
    """The child: one JSON line per archive, {"file"} when it passed, {"file", "reason"} when not."""
    import warnings

    warnings.simplefilter("ignore")  # torch.jit deprecations on stderr; the reasons go to stdout
    for name in argv if argv is not None else sys.argv[1:]:
        path = Path(name)
        entry = {"file": path.name}
        try:
            check_archive_content(path)
        except Exception as exc:  # any failure refuses the archive; its reason is one line
            reason = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
            entry["reason"] = " ".join(reason.split())[:500]
        print(json.dumps(entry), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
