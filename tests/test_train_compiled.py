"""torch.compile'd training (its own file: compiling takes a minute, and pytest-xdist spreads files)."""

from __future__ import annotations

import torch

from model.artifact import load_artifact
from tests.test_train import all_predictions, quick_run


def test_compiled_training_learns_the_same_model(tmp_path, synth_data):
    eager = quick_run(synth_data[0], tmp_path / "eager", "--p1", "0", "--p2", "0")
    compiled = quick_run(synth_data[0], tmp_path / "compiled", "--p1", "0", "--p2", "0", "--compile")
    assert load_artifact(compiled).metadata["train"]["compile"] is True
    # Same steps, same data order; only the kernels' rounding may differ.
    torch.testing.assert_close(all_predictions(compiled), all_predictions(eager), atol=1e-3, rtol=0)
