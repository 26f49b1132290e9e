"""Progress of a long client job (score, recommend-all): a bar on a terminal, plain lines in a log."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


class Progress:
    """A scoring run's progress: a redrawn bar on a terminal, else a plain line every LOG_INTERVAL_S.

    In a log file a redrawn bar is one endless line of carriage returns.
    """

    def __init__(self, enabled: bool, total: int | None, skipped: int, start: float, unit: str = "rows") -> None:
        self.enabled, self.total, self.skipped, self.start, self.unit = enabled, total, skipped, start, unit
        self.interactive = enabled and sys.stderr.isatty()
        self.bar = tqdm(
            total=total,
            initial=skipped,
            unit=unit,
            unit_scale=True,
            smoothing=0.1,
            disable=not self.interactive,
            file=sys.stderr,
        )
        self.last_log = time.monotonic()

    def update(self, new_rows: int, scored: int, errors: int) -> None:
        """Count `new_rows` more rows; `scored` and `errors` are this run's totals so far."""
        self.bar.update(new_rows)
        if self.enabled and not self.interactive and time.monotonic() - self.last_log >= LOG_INTERVAL_S:
            self.last_log = time.monotonic()
            done, total = self.skipped + scored, self.total
            rate = scored / max(time.perf_counter() - self.start, 1e-9)
            share = f" ({done / total:.1%})" if total else ""
            print(
                f"progress: {done:,}/{total:,} {self.unit}{share}, {errors:,} with errors, {rate:,.0f} {self.unit}/s",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        """Finish the bar."""
        self.bar.close()
