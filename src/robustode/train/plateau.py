"""When a run's test accuracy has stopped rising: ``plateau_patience`` in a TrainConfig.

The rule is the usual early-stopping one (patience without improvement): the
run has reached its plateau at epoch E when its best test accuracy so far was
first reached at an epoch ≤ E − P, i.e. none of the last P epochs rose above
the best before them. An equal accuracy is no rise. The decision reads only
the per-epoch records, so a resumed run decides exactly as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence


def plateau_epoch(accuracies: Sequence[float | None], patience: int) -> int | None:
    """The first epoch (counted from 1) at which ``accuracies`` (one per epoch, in order)
    has gone ``patience`` epochs without rising above its best; None if it never has.
    An epoch without a test accuracy (None) counts as no rise."""
    if patience < 1:
        raise ValueError(f"patience must be ≥ 1, got {patience}")
    best: float | None = None
    best_epoch = 0
    for epoch, acc in enumerate(accuracies, 1):
        if acc is not None and (best is None or acc > best):
            best, best_epoch = acc, epoch
        elif epoch - best_epoch >= patience:
            return epoch
    return None


def accuracies_by_epoch(records: Sequence[dict], last_epoch: int) -> list[float | None]:
    """Epochs 1 … ``last_epoch``'s test accuracies from a run's metrics records (a missing
    epoch is None)."""
    by_epoch = {int(r["epoch"]): r.get("test_acc") for r in records if "epoch" in r}
    return [by_epoch.get(e) for e in range(1, last_epoch + 1)]
