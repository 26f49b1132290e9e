"""Stage one movierec version in the storage layout KServe's TorchServe runtime mounts at /mnt/models.

    python deploy/kserve/stage.py --mar model_store/movierec-2.0.mar --out deploy/kserve/layout/v2.0

writes OUT/config/config.properties (the KServe config with model_snapshot naming this archive, its
version and the workers and batching of the archive's own model-config.yaml) and
OUT/model-store/movierec-2.0.mar. Upload OUT's contents to the storageUri prefix.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import zipfile
from pathlib import Path

from movierec.torchserve.archive import batch_settings, load_model_config

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "config" / "config.properties"
MODEL_NAME = "movierec"
SNAPSHOT_KEY = "model_snapshot="


def mar_manifest(mar: Path) -> dict:
    """The model section of a .mar's MAR-INF/MANIFEST.json."""
    with zipfile.ZipFile(mar) as archive:
        return json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]


def render_config(template: str, mar_name: str, version: str, batching: dict[str, int]) -> str:
    """The template with its single model_snapshot line serving mar_name as the default version with `batching`."""
    lines = template.splitlines()
    found = [i for i, line in enumerate(lines) if line.startswith(SNAPSHOT_KEY)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one {SNAPSHOT_KEY} line in the template, found {len(found)}")
    snapshot = json.loads(lines[found[0]][len(SNAPSHOT_KEY) :])
    (settings,) = snapshot["models"][MODEL_NAME].values()
    settings = {**settings, **batching, "defaultVersion": True, "marName": mar_name}
    snapshot["models"] = {MODEL_NAME: {version: settings}}
    snapshot["modelCount"] = 1
    lines[found[0]] = SNAPSHOT_KEY + json.dumps(snapshot, separators=(",", ":"))
    return "\n".join(lines) + "\n"


def stage(mar: Path, out: Path, template: Path = TEMPLATE) -> Path:
    """Write the layout for one archive into out (replacing what was there); return out."""
    model = mar_manifest(mar)
    if model.get("modelName") != MODEL_NAME:
        raise ValueError(f"{mar} holds model {model.get('modelName')!r}, expected {MODEL_NAME!r}")
    version = str(model["modelVersion"])
    # The archive's model-config.yaml is what its workers were tuned for; the snapshot must agree.
    batching = batch_settings(load_model_config(mar))
    config = render_config(template.read_text(encoding="utf-8"), mar.name, version, batching)
    if out.exists():
        shutil.rmtree(out)
    (out / "config").mkdir(parents=True)
    (out / "model-store").mkdir()
    (out / "config" / "config.properties").write_text(config, encoding="utf-8")
    shutil.copy2(mar, out / "model-store" / mar.name)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mar", type=Path, required=True, help="a movierec .mar built by `make mar`")
    parser.add_argument("--out", type=Path, required=True, help="layout directory to (re)create")
    args = parser.parse_args(argv)
    try:
        out = stage(args.mar, args.out)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        print(f"stage.py: {error}", file=sys.stderr)
        return 1
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
