"""What the benchmark measures and for how long: shared by the measuring and the reporting modules."""

from __future__ import annotations

from dataclasses import dataclass

from movierec.defaults import BATCH_MODEL
from movierec.defaults import MODEL as MODEL  # the latency registration the benchmark serves

SEED = 0
SECTIONS = ("inprocess", "served", "csv")
TOP_K = 10
# Version of the archive the benchmark builds; its own name keeps `make mar` out of build/mar-1.0.
BENCH_VERSION = "bench"
# The model name `movierec score` registers the archive under, with its own (unbatched, 2-worker) settings.
BULK_MODEL = BATCH_MODEL
# The body kind holding Arrow IPC bodies (the bulk10k pairs): sent by the Python load generator, not wrk.
ARROW_KIND = "arrow10k"


@dataclass
class Settings:
    """How long and how often to measure."""

    rounds: int = 3
    duration: int = 10  # s of wrk measurement per served configuration
    warmup: int = 3  # s of wrk traffic per configuration before each measurement
    jvm_warmup: int = 60  # s of mixed traffic after start, before any served number
    inprocess_seconds: float = 1.0  # s of timed calls per in-process configuration
    csv_rows: int = 1_000_000


FULL = Settings()
QUICK = Settings(rounds=1, duration=3, warmup=1, jvm_warmup=12, inprocess_seconds=0.3, csv_rows=1_000_000)
