"""A stage's progress on stderr: a tqdm bar on a terminal, plain lines in a redirected log.

A bar redraws itself with escape codes, which a log file keeps as noise; a log gets one line at
most every `every_s` seconds and one at the end, in the summary's words (failed, warnings).
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

EVERY_S = 10.0


class Progress:
    def __init__(self, stage: str, position: int, every_s: float = EVERY_S):
        self.stage, self.every_s = stage, every_s
        self.n = self.rows = self.failed = self.warnings = 0
        self.bar = tqdm(desc=f"{stage:>9}", unit="in", position=position, dynamic_ncols=True, leave=True) if sys.stderr.isatty() else None
        self.last, self.printed = time.monotonic(), None

    def update(self, n: int, rows: int, failed: int, warnings: int) -> None:
        """`n` more inputs done; the stage's totals so far."""
        self.n += n
        self.rows, self.failed, self.warnings = rows, failed, warnings
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(rows=rows, failed=failed, **({"warnings": warnings} if warnings else {}), refresh=False)
        elif time.monotonic() - self.last >= self.every_s:
            self._line()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.printed != (self.n, self.rows, self.failed, self.warnings):  # the end, unless just said
            self._line()

    def _line(self) -> None:
        self.last, self.printed = time.monotonic(), (self.n, self.rows, self.failed, self.warnings)
        warned = f", {self.warnings} warnings" if self.warnings else ""
        print(f"{self.stage:>9}: {self.n} inputs, {self.rows} rows, {self.failed} failed{warned}", file=sys.stderr, flush=True)
