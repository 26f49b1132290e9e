"""Stage one movierec version in the storage layout KServe's TorchServe runtime mounts at /mnt/models.

    python deploy/kserve/stage.py --mar model_store/movierec-2.0.mar --out deploy/kserve/layout/v2.0

writes OUT/config/config.properties (the KServe config with model_snapshot naming this archive, its
version and the workers and batching of the archive's own model-config.yaml) and
OUT/model-store/movierec-2.0.mar. Upload OUT's contents to the storageUri prefix.

    python deploy/kserve/stage.py --batch --mar model_store/movierec-2.0.mar --out deploy/kserve/layout/batch-v2.0

stages the same archive for inferenceservice-batch.yaml instead: served as movierec-batch with the
bulk-scoring settings `movierec score` registers locally (no dynamic batching, 2 workers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import zipfile
from pathlib import Path

from movierec.client.settings import DEFAULT_WORKERS
from movierec.defaults import BATCH_MODEL as BATCH_MODEL_NAME
from movierec.defaults import MODEL as MODEL_NAME
from movierec.torchserve import registry
from movierec.torchserve.archive import batch_settings, load_model_config, read_manifest
from movierec.torchserve.properties import parse_properties, set_property

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "config" / "config.properties"
# The settings of `movierec score`'s own registration (movierec/client/scoring.py BatchSettings):
# a 20,000-row Arrow body is a whole batch, so no dynamic batching; 2 workers for the pod's 2 CPUs.
BATCH_SETTINGS = {
    "minWorkers": DEFAULT_WORKERS,
    "maxWorkers": DEFAULT_WORKERS,
    **registry.BATCH_SETTINGS,
    "responseTimeout": 60,
}
SNAPSHOT_KEY = "model_snapshot"


def render_config(
    template: str, mar_name: str, version: str, batching: dict[str, int], model_name: str = MODEL_NAME
) -> str:
    """The template with its single model_snapshot line serving mar_name as model_name's default version with `batching`."""
    snapshot = json.loads(parse_properties(template)[SNAPSHOT_KEY])
    (settings,) = snapshot["models"][MODEL_NAME].values()
    settings = {**settings, **batching, "defaultVersion": True, "marName": mar_name}
    return set_property(template, SNAPSHOT_KEY, registry.snapshot_json({model_name: {version: settings}}))


def stage(mar: Path, out: Path, template: Path = TEMPLATE, batch: bool = False) -> Path:
    """Write the layout for one archive into out (replacing what was there); return out.

    batch=True serves it as movierec-batch with BATCH_SETTINGS instead of the archive's own batching.
    """
    model = read_manifest(mar)
    if model.get("modelName") != MODEL_NAME:
        raise ValueError(f"{mar} holds model {model.get('modelName')!r}, expected {MODEL_NAME!r}")
    version = str(model["modelVersion"])
    # The archive's model-config.yaml is what its workers were tuned for; the snapshot must agree.
    batching = BATCH_SETTINGS if batch else batch_settings(load_model_config(mar))
    name = BATCH_MODEL_NAME if batch else MODEL_NAME
    config = render_config(template.read_text(encoding="utf-8"), mar.name, version, batching, name)
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
    parser.add_argument(
        "--batch", action="store_true", help=f"stage for inferenceservice-batch.yaml: {BATCH_MODEL_NAME}, bulk settings"
    )
    args = parser.parse_args(argv)
    try:
        out = stage(args.mar, args.out, batch=args.batch)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        print(f"stage.py: {error}", file=sys.stderr)
        return 1
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
