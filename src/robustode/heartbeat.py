"""A heartbeat for long work whose output is not a terminal (a log file, CI, a cluster job).

On a terminal a progress bar shows that work goes on; in a log, a nine-minute
epoch or a two-minute Square run would print nothing. :class:`Heartbeat`
prints one line every ``interval`` seconds while its block runs — what is
running, how far it is, and an estimate of the time left — from a daemon
thread that only reads what the worker tells it (:meth:`update`).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

DEFAULT_INTERVAL_S = 60.0


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Heartbeat:
    """``with Heartbeat("evaluate", total=40) as beat: ... beat.update(done, "pgd20 batch 3")``
    prints ``[evaluate] 12/40 done (pgd20 batch 3), 4 min elapsed, about 9 min left`` every
    ``interval`` seconds; ``enabled=False`` (a terminal with a bar, or a rank other than 0)
    prints nothing."""

    def __init__(
        self,
        what: str,
        *,
        total: int | None = None,
        interval: float = DEFAULT_INTERVAL_S,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.what = what
        self.total = total
        self.interval = float(interval)
        self.enabled = enabled and self.interval > 0
        self.stream = stream or sys.stderr
        self.done = 0.0
        self.detail = ""
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, done: float, detail: str = "") -> None:
        self.done = done
        self.detail = detail

    def line(self) -> str:
        elapsed = time.monotonic() - self._started
        progress = f"{self.done:g}" + (f"/{self.total}" if self.total else "")
        text = f"[{self.what}] {progress} done"
        if self.detail:
            text += f" ({self.detail})"
        text += f", {format_seconds(elapsed)} elapsed"
        if self.total and self.done > 0:
            left = elapsed * (self.total - self.done) / self.done
            text += f", about {format_seconds(left)} left"
        return text

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            print(self.line(), file=self.stream, flush=True)

    def __enter__(self) -> Heartbeat:
        self._started = time.monotonic()
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="robustode-heartbeat")
            self._thread.daemon = True
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None


__all__ = ["DEFAULT_INTERVAL_S", "Heartbeat", "format_seconds"]
