"""One progress report for long work: a bar on a terminal, a plain line every step of the way
otherwise (logs, CI), with the rate and the time left."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def format_seconds(seconds: float) -> str:
    """``"42 s"`` below 90 seconds, else ``"3.5 min"``."""
    seconds = max(0.0, seconds)
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def say_stderr(message: str) -> None:
    """The default ``say`` of long-running library calls: one line on stderr, flushed."""
    print(message, file=sys.stderr, flush=True)


class Progress:
    """``update(done, tokens=0)`` after each piece of work; ``close()`` at the end.

    On a terminal (and without ``say``) it draws a tqdm bar; otherwise it writes
    ``DESC: k/N (r pairs/s, t tokens/s, ETA s)`` through ``say`` (stderr by default) each time
    another ``every`` of the total is done, and at the end.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        say: Callable[[str], None] | None = None,
        every: float = 0.1,
        unit: str = "pair",
    ) -> None:
        self.total, self.desc, self.every, self.unit = total, desc, every, unit
        self.done = self.tokens = 0
        self._next = 0.0
        self._t0 = time.perf_counter()
        self._say = say or say_stderr
        self._bar = None
        if say is None and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
            except ImportError:
                pass

    def _rates(self) -> tuple[float, float]:
        dt = max(1e-9, time.perf_counter() - self._t0)
        return self.done / dt, self.tokens / dt

    def update(self, done: int, tokens: int = 0) -> None:
        self.done += done
        self.tokens += tokens
        rate, tok_rate = self._rates()
        if self._bar is not None:
            if self.tokens:
                self._bar.set_postfix_str(f"{tok_rate:,.0f} tok/s", refresh=False)
            self._bar.update(done)
            return
        frac = self.done / max(1, self.total)
        if frac >= self._next or self.done >= self.total:
            eta = (self.total - self.done) / max(rate, 1e-9)
            toks = f", {tok_rate:,.0f} tokens/s" if self.tokens else ""
            self._say(
                f"{self.desc}: {self.done}/{self.total} ({rate:.1f} {self.unit}s/s{toks}, "
                f"ETA {format_seconds(eta)})"
            )
            self._next = frac + self.every

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
