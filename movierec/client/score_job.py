"""What both scoring paths share (JSON in scoring.py, Arrow in arrow_scoring.py): job checks, the cold-start probe, the summary."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from model.protocol import MAX_INSTANCES  # the server's default cap: a bigger chunk would get 413
from movierec.client.columnar import InputError

SYNC_INTERVAL_S = 1.0
PROBE_ID = "movierec-cold-start-probe"  # no model knows it: its answer shows the server's cold_start mode
MODE_CHANGED = "its cold_start mode changed since the job started (or the versions differ); score the file again"


@dataclass
class ScoreSummary:
    """What a scoring run did."""

    rows_scored: int
    rows_with_errors: int
    rows_skipped: int
    elapsed_s: float
    rows_fallback: int | None = None  # answered by the cold-start fallback; None: the server has none

    @property
    def rows_per_s(self) -> float:
        """Throughput of this run (resumed rows excluded)."""
        return self.rows_scored / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def __str__(self) -> str:
        resumed = f", {self.rows_skipped:,} already done before resume" if self.rows_skipped else ""
        cold = "" if self.rows_fallback is None else f", {self.rows_fallback:,} cold-start fallbacks"
        return (
            f"scored {self.rows_scored:,} rows ({self.rows_with_errors:,} with errors{cold}{resumed}) "
            f"in {self.elapsed_s:.1f}s: {self.rows_per_s:,.0f} rows/s"
        )


def check_job(
    input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], chunk_size: int, concurrency: int
) -> None:
    """Refuse job settings that cannot work, before any file is touched."""
    if not 1 <= chunk_size <= MAX_INSTANCES:
        raise InputError(f"chunk size must be 1..{MAX_INSTANCES}, got {chunk_size}")
    if concurrency < 1:
        raise InputError(f"concurrency must be at least 1, got {concurrency}")
    if Path(input_path).resolve() == Path(output_path).resolve():
        raise InputError("input and output are the same file")


def v1_path(model: str) -> str:
    """KServe's v1 predict route, which TorchServe serves natively for the model's default version."""
    return f"/v1/models/{model}:predict"
