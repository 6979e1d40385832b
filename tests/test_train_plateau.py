"""``plateau_patience``: training stops when the test accuracy has stopped rising, and a
resumed run decides exactly as an uninterrupted one."""

from __future__ import annotations

import json

import pytest

from robustode.train import TrainConfig, train
from robustode.train import loop as loop_module
from robustode.train.config import ConfigError
from robustode.train.plateau import accuracies_by_epoch, plateau_epoch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("accuracies", "patience", "expected"),
    [
        ([0.5, 0.6, 0.6, 0.55, 0.7], 2, 4),  # best at 2; 3 equal (no rise), 4 lower → stop at 4
        ([0.5, 0.6, 0.6, 0.65, 0.7], 2, None),  # keeps rising
        ([0.5, 0.4, 0.3], 1, 2),  # patience 1: the first epoch without a rise stops it
        ([0.5, 0.5, 0.5, 0.5], 3, 4),  # flat from the start: epoch 1 is the best
        ([None, None], 2, 2),  # no accuracy is no rise
        ([], 1, None),
    ],
)
def test_plateau_epoch_is_patience_epochs_after_the_first_best(accuracies, patience, expected):
    assert plateau_epoch(accuracies, patience) == expected


def test_plateau_epoch_agrees_with_its_definition_on_random_series():
    """An independent statement of the rule: stop at the first E with E − argmax₁..E ≥ P
    (argmax: the first epoch reaching the maximum)."""
    import random

    rng = random.Random(0)
    for _ in range(300):
        accs = [rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in range(rng.randint(1, 12))]
        patience = rng.randint(1, 4)
        expected = None
        for e in range(1, len(accs) + 1):
            head = accs[:e]
            if e - (head.index(max(head)) + 1) >= patience:
                expected = e
                break
        assert plateau_epoch(accs, patience) == expected, (accs, patience)


def test_accuracies_by_epoch_reads_records_in_epoch_order():
    records = [{"epoch": 2, "test_acc": 0.4}, {"epoch": 1, "test_acc": 0.3}, {"other": 1}]
    assert accuracies_by_epoch(records, 3) == [0.3, 0.4, None]


def test_plateau_needs_the_test_evaluation():
    with pytest.raises(ConfigError, match="plateau_patience needs the per-epoch test accuracy"):
        TrainConfig(plateau_patience=2, eval_subset=0)
    with pytest.raises(ConfigError, match="plateau_patience must be ≥ 1"):
        TrainConfig(plateau_patience=0)


def _scripted(monkeypatch, accuracies):
    """The trainer's per-epoch test accuracy, scripted: epoch E reads accuracies[E − 1]."""
    calls = {"n": 0}

    def evaluate(model, loader, ctx, **kwargs):
        calls["n"] += 1
        return accuracies[calls["n"] - 1], 1.0

    monkeypatch.setattr(loop_module, "evaluate", evaluate)
    return calls


def _config(**changes):
    base = dict(
        model="resnet10", model_options={"width": 2}, epochs=8, batch_size=64,
        max_steps_per_epoch=1, eval_subset=8, plateau_patience=2, device="cpu",
    )  # fmt: skip
    return TrainConfig(**{**base, **changes})


def test_training_stops_at_the_plateau_and_a_rerun_has_nothing_to_do(tmp_path, monkeypatch):
    accs = [0.5, 0.6, 0.6, 0.55, 0.9, 0.9, 0.9, 0.9]
    calls = _scripted(monkeypatch, accs)
    summary = train(_config(), tmp_path / "run", progress=False)
    assert summary.epochs == 4 and summary.plateau  # plateau_epoch(accs, 2) == 4
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert [r["plateau"] for r in records] == [False, False, False, True]
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["epochs"] == 4 and saved["plateau"] is True
    # the stopping epoch ends in a checkpoint (the run's last), as a final epoch does
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("epoch-*.json"))
    assert kept[-1] == "epoch-0004.json"
    # the same command again: a finished run, nothing trained, nothing evaluated
    again = train(_config(), tmp_path / "run", progress=False)
    assert again.epochs == 4 and again.plateau and calls["n"] == 4 and again.records == []


def test_a_resumed_run_stops_at_the_same_epoch(tmp_path, monkeypatch):
    accs = [0.5, 0.6, 0.6, 0.55, 0.9, 0.9, 0.9, 0.9]
    _scripted(monkeypatch, accs[:2])
    first = train(_config(epochs=2), tmp_path / "run", progress=False)
    assert first.epochs == 2 and not first.plateau  # stopped by its epoch count
    _scripted(monkeypatch, accs[2:])
    resumed = train(_config(), tmp_path / "run", resume=True, progress=False)
    # the plateau counts the epochs before the resume: best at 2, so it stops at 4
    assert resumed.epochs == 4 and resumed.plateau
    assert [r["epoch"] for r in resumed.records] == [3, 4]


def test_a_run_without_plateau_trains_every_epoch(tmp_path, monkeypatch):
    _scripted(monkeypatch, [0.5, 0.4, 0.3])
    summary = train(_config(epochs=3, plateau_patience=None), tmp_path / "run", progress=False)
    assert summary.epochs == 3 and not summary.plateau
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert all("plateau" not in r for r in records)


def test_the_command_line_says_why_a_plateaued_run_has_nothing_to_train(
    tmp_path, monkeypatch, capsys
):
    from robustode.cli import main

    _scripted(monkeypatch, [0.5, 0.6, 0.6, 0.55, 0.9, 0.9, 0.9, 0.9])
    train(_config(), tmp_path / "run", progress=False)
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "run"), "--no-progress-bar"]) == 0
    out = capsys.readouterr().out
    assert "already at epoch 4 (its test accuracy plateaued: plateau_patience 2)" in out
