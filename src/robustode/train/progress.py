"""What a training run shows: a tqdm bar on a terminal, plain lines otherwise.

On a terminal (``sys.stderr.isatty()``) each epoch gets a progress bar with
the running loss; elsewhere (CI, a log file) a line starts the run, a
heartbeat line with the step, the running loss and an estimate of the time
left comes every ``heartbeat`` seconds (60 by default) inside a long epoch,
and one line sums each epoch up at its end. Only rank 0 shows anything.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

from ..heartbeat import DEFAULT_INTERVAL_S, Heartbeat


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def epoch_line(metrics: dict[str, Any], epochs: int) -> str:
    """One line summing up an epoch's metrics."""
    parts = [
        f"epoch {metrics['epoch']}/{epochs}",
        f"loss {_fmt(metrics['loss'], '.4f')}",
        f"train acc {_fmt(metrics.get('train_acc'), '.4f')}",
        f"test acc {_fmt(metrics.get('test_acc'), '.4f')}",
        f"lr {metrics['lr']:.3g}",
    ]
    if metrics.get("nfe_forward"):
        parts.append(
            f"NFE/batch {metrics['nfe_forward_per_batch']:.1f} fwd "
            f"{metrics['nfe_backward_per_batch']:.1f} bwd"
        )
    parts.append(f"{metrics['seconds']:.1f} s")
    return " | ".join(parts)


class Progress:
    """Progress of a run; ``enabled`` False prints nothing (ranks other than 0)."""

    def __init__(
        self,
        epochs: int,
        *,
        enabled: bool = True,
        bar: bool | None = None,
        stream: TextIO | None = None,
        heartbeat: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self.epochs = epochs
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.bar = enabled and (self.stream.isatty() if bar is None else bar)
        self.heartbeat = heartbeat
        self._tqdm: tqdm | None = None
        self._beat: Heartbeat | None = None
        self._steps = 0
        self._loss = 0.0

    def start_epoch(self, epoch: int, steps: int) -> None:
        self._steps, self._loss = 0, float("nan")
        if self.enabled and not self.bar:
            self._beat = Heartbeat(
                f"epoch {epoch}/{self.epochs}",
                total=steps,
                interval=self.heartbeat,
                stream=self.stream,
            ).__enter__()
        if self.bar:
            self._tqdm = tqdm(
                total=steps,
                desc=f"epoch {epoch}/{self.epochs}",
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
            )

    def step(self, loss: float) -> None:
        self._steps += 1
        if self._beat is not None:
            self._beat.update(self._steps, f"step loss {loss:.4f}")
        if self._tqdm is not None:
            self._tqdm.update(1)
            self._tqdm.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def end_epoch(self, metrics: dict[str, Any]) -> None:
        self.close()
        self.log(epoch_line(metrics, self.epochs))

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self._beat is not None:
            self._beat.__exit__(None, None, None)
            self._beat = None
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
