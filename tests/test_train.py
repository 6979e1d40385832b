"""The trainer: papers' schedules, config checks, run folders, checkpoints, exact resume, CLI.

Everything trains a width-4 ResNet10 (or a tiny ODENet) on the digits data for
a few steps, one thread, so the file runs in seconds.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from robustode.cli import main
from robustode.defenses import list_defenses, register_defense
from robustode.models import create_model
from robustode.train import (
    PRESETS,
    CheckpointError,
    ConfigError,
    PiecewiseSchedule,
    TrainConfig,
    build_config,
    find_checkpoint,
    load_model,
    read_checkpoint,
    read_metrics,
    train,
)
from robustode.train.config import preset

TINY = {
    "model": "resnet10",
    "model_options": {"width": 4},
    "batch_size": 16,
    "max_steps_per_epoch": 2,
    "eval_subset": 64,
    "test_batch_size": 64,
    "device": "cpu",
}


pytestmark = pytest.mark.usefixtures("one_thread")


class _NoisyNatural:
    """Cross-entropy on x + N(0, 0.1²) from the global RNG, as random starts draw theirs."""

    name = "test_noisy_natural"

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        logits = model((x + 0.1 * torch.randn_like(x)).clamp(0, 1))
        loss = F.cross_entropy(logits, y)
        return loss, {"train_correct": float((logits.argmax(1) == y).sum()), "noise": 0.1}


if _NoisyNatural.name not in list_defenses():
    register_defense(_NoisyNatural.name, summary="test only")(lambda: _NoisyNatural())


def _config(**changes) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, **changes})


def _weights(run_dir, epoch):
    return load_file(run_dir / "checkpoints" / f"epoch-{epoch:04d}.safetensors")


# ----------------------------------------------------------------- schedules
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sonet", {1: 0.01, 150: 0.01, 151: 1e-3, 300: 1e-3, 301: 1e-4, 350: 1e-4}),
        ("lad-cifar10", {1: 0.1, 80: 0.1, 81: 0.01, 120: 0.01, 121: 1e-3, 160: 1e-3}),
        ("lad-cifar100", {1: 0.1, 150: 0.1, 151: 0.01, 225: 0.01, 226: 1e-3, 300: 1e-3}),
    ],
)
def test_presets_give_the_papers_lr_at_the_milestones(name, expected):
    config = build_config(preset_name=name)
    schedule = PiecewiseSchedule.from_config(config)
    for epoch, lr in expected.items():
        assert schedule.lr(epoch) == pytest.approx(lr, rel=1e-12), epoch
    # the same lr torch's MultiStepLR gives when stepped once per epoch
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=config.lr)
    torch_schedule = torch.optim.lr_scheduler.MultiStepLR(opt, list(config.milestones), 0.1)
    for epoch in range(1, config.epochs + 1):
        assert schedule.lr(epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        torch_schedule.step()
    paper = {
        "sonet": (350, 100, 0.0, 0.01),
        "lad-cifar10": (160, 128, 1e-4, 0.1),
        "lad-cifar100": (300, 128, 1e-4, 0.1),
    }[name]
    assert (config.epochs, config.batch_size, config.weight_decay, config.lr) == paper
    assert config.momentum == 0.9 and config.augment is True


# ----------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epochs": 0}, "epochs must be ≥ 1, got 0"),
        ({"epochs": "10"}, "epochs must be an integer, got '10' (str)"),
        ({"epochs": True}, "epochs must be an integer"),
        ({"lr": -0.1}, "lr must be > 0.0"),
        ({"momentum": 1.0}, "momentum must be < 1.0"),
        ({"milestones": [300, 150]}, "milestones must be increasing positive epochs"),
        ({"milestones": [1.5]}, "milestones must be a list of integers"),
        ({"nesterov": True, "momentum": 0.0}, "nesterov needs momentum > 0"),
        ({"amp": "fp8"}, "amp must be one of none, bf16, fp16"),
        ({"model_options": [1]}, "model_options must be a table of KEY = VALUE"),
        ({"device": "tpu:x"}, "device must be auto, cpu, cuda or cuda:N"),
        ({"learning_rate": 0.1}, "unknown config key(s) 'learning_rate'; accepted: model, "),
    ],
)
def test_bad_config_values_get_one_clear_error(values, message):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(values)
    assert message in str(err.value)


def test_config_layers_preset_file_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'model = "soblock"\nepochs = 5\nmilestones = [2, 4]\n'
        '[model_options]\nwidth = 8\nmethod = "rk4"\n'
    )
    config = build_config(
        preset_name="sonet", file=path, overrides={"epochs": 7, "model_options": {"width": 4}}
    )
    assert config.data == "cifar10" and config.batch_size == 100  # from the preset
    assert config.model == "soblock" and config.milestones == (2, 4)  # from the file
    assert config.epochs == 7 and config.model_options == {"width": 4, "method": "rk4"}
    # a run's config.json is a config file too, and round-trips
    (tmp_path / "c.json").write_text(json.dumps(config.to_dict()))
    assert build_config(file=tmp_path / "c.json") == config

    path.write_text("epochs = 5\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"run.toml: unknown config key\(s\) 'learning_rate'"):
        build_config(file=path)
    path.write_text('epochs = "five"\n')
    with pytest.raises(ConfigError, match="epochs must be an integer, got 'five'"):
        build_config(file=path)
    path.write_text("epochs = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        build_config(file=path)
    with pytest.raises(ConfigError, match="unknown preset 'sonett'"):
        preset("sonett")
    assert set(PRESETS) == {"sonet", "lad-cifar10", "lad-cifar100"}


# ----------------------------------------------------------------- resume
def test_resume_gives_bitwise_the_uninterrupted_weights(tmp_path):
    settings = {"defense": "test_noisy_natural", "augment": True, "checkpoint_every": 1}
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(_config(epochs=3, **settings), full, progress=False)
    train(_config(epochs=2, **settings), cut, progress=False)  # "killed" after epoch 2
    summary = train(_config(epochs=3, **settings), cut, resume=True, progress=False)
    assert summary.start_epoch == 2 and [r["epoch"] for r in summary.records] == [3]

    a, b = _weights(full, 3), _weights(cut, 3)
    assert a.keys() == b.keys() and any("running_mean" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    opt_a, opt_b = (read_checkpoint(d / "checkpoints" / "epoch-0003.json") for d in (full, cut))
    for index, state in opt_a.optimizer_state["state"].items():
        assert torch.equal(
            state["momentum_buffer"], opt_b.optimizer_state["state"][index]["momentum_buffer"]
        )
    strip = [{k: v for k, v in r.items() if "seconds" not in k} for r in read_metrics(full)]
    assert strip == [{k: v for k, v in r.items() if "seconds" not in k} for r in read_metrics(cut)]
    assert read_metrics(full)[0]["defense"]["noise"] == pytest.approx(0.1)

    # a finished run resumes to nothing; one with more epochs would go on
    again = train(None, cut, resume=True, progress=False)
    assert again.records == [] and again.final["epoch"] == 3
    # killed after its last checkpoint, before its summary: the resume writes the summary
    (cut / "summary.json").unlink()
    again = train(None, cut, resume=True, progress=False)
    assert again.records == [] and json.loads((cut / "summary.json").read_text())["epochs"] == 3


def test_a_run_killed_before_its_first_checkpoint_records_each_epoch_once(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(_config(epochs=2, checkpoint_every=1), full, progress=False)
    train(_config(epochs=2, checkpoint_every=1), cut, progress=False)
    # killed after epoch 1's metrics line was made durable, before its checkpoint was written
    shutil.rmtree(cut / "checkpoints")
    (cut / "summary.json").unlink()
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text(lines[0] + "\n")

    summary = train(None, cut, resume=True, progress=False)
    assert summary.start_epoch == 0
    strip = [{k: v for k, v in r.items() if "seconds" not in k} for r in read_metrics(full)]
    assert [r["epoch"] for r in read_metrics(cut)] == [1, 2]
    assert strip == [{k: v for k, v in r.items() if "seconds" not in k} for r in read_metrics(cut)]


def test_a_damaged_latest_checkpoint_is_an_error_never_a_silent_fallback(tmp_path):
    run = tmp_path / "run"
    train(_config(epochs=3, keep_checkpoints=0), run, progress=False)
    folder = run / "checkpoints"
    assert json.loads((folder / "latest.json").read_text())["epoch"] == 3
    # an interrupted write leaves temporary files: never read, whatever they hold
    (folder / "epoch-0004.json.123.0badf00d.tmp").write_text("{not json")
    (folder / "epoch-0004.safetensors.123.0badf00d.tmp").write_bytes(b"\x80garbage")
    assert find_checkpoint(folder).epoch == 3

    data = bytearray((folder / "epoch-0003.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in a weight
    (folder / "epoch-0003.safetensors").write_bytes(bytes(data))
    # the damaged file and the way to choose another are named; nothing older is taken
    with pytest.raises(CheckpointError, match=r"epoch-0003\.safetensors is damaged.*epoch-2"):
        find_checkpoint(folder)
    with pytest.raises(CheckpointError, match="never falls back"):
        train(None, run, resume=True, progress=False)
    assert find_checkpoint(folder, which="epoch-2").epoch == 2

    (folder / "latest.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"latest\.json is damaged"):
        find_checkpoint(folder)

    # going back to an earlier checkpoint on purpose redoes the later epochs and keeps one
    # metrics line per epoch
    summary = train(None, run, resume=True, progress=False, checkpoint="epoch-1")
    assert summary.start_epoch == 1
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3]
    assert find_checkpoint(folder).epoch == 3

    for path in folder.glob("epoch-*.json"):
        path.write_text("[]")
    with pytest.raises(CheckpointError, match="is not a robustode-checkpoint-1 file"):
        find_checkpoint(folder)


def test_checkpoints_are_safetensors_and_json_and_rebuild_the_model(tmp_path):
    run = tmp_path / "run"
    train(_config(epochs=2, keep_checkpoints=1), run, progress=False)
    files = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    assert files == [
        ".robustode/lock",  # the folder's lock and the manifest of robustode's own files
        ".robustode/manifest.jsonl",
        "checkpoints/epoch-0002.json",
        "checkpoints/epoch-0002.safetensors",
        "checkpoints/epoch-0002.state.safetensors",
        "checkpoints/latest.json",
        "config.json",
        "metrics.jsonl",
        "summary.json",
    ]
    for path in run.rglob("*"):
        if path.is_file():
            assert not path.read_bytes().startswith(b"\x80")  # no pickle anywhere
    model = load_model(run)  # safetensors + the model_config in its header, no unpickling
    also = load_model(run / "checkpoints" / "epoch-0002.safetensors")
    options = json.loads((run / "checkpoints" / "epoch-0002.json").read_text())["model_config"]
    assert options["in_channels"] == 1 and options["num_classes"] == 10 and options["seed"] == 0
    rebuilt = create_model(options.pop("name"), **options)
    rebuilt.load_state_dict(_weights(run, 2))
    rebuilt.eval()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x)) and torch.equal(also(x), rebuilt(x))


# ----------------------------------------------------------------- run folder
def _files(folder):
    """Every file's bytes, the folder's lock (it names the last process) aside."""
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != "lock"}


def test_a_folder_holding_a_run_is_refused_unless_resume_or_overwrite(tmp_path):
    run = tmp_path / "run"
    train(_config(epochs=1), run, progress=False)
    before = _files(run)
    # the same config again goes on where the run stopped: a finished run has nothing to do
    # and changes nothing, as a rerun of a finished evaluation
    again = train(_config(epochs=1), run, progress=False)
    assert again.records == [] and again.start_epoch == 1 and again.final["epoch"] == 1
    assert _files(run) == before
    with pytest.raises(ConfigError, match=r"holds a different run \(it differs in lr\)"):
        train(_config(epochs=1, lr=0.1), run, progress=False)
    with pytest.raises(ConfigError, match=r"cannot resume .* with a changed lr"):
        train(_config(epochs=2, lr=0.1), run, resume=True, progress=False)
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(None, tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(ValueError, match="model 'resnet10' has no option"):
        train(_config(model_options={"widht": 4}), run, overwrite=True, progress=False)
    assert before == _files(run)

    summary = train(_config(epochs=1, lr=0.1), run, overwrite=True, progress=False)
    assert summary.final["lr"] == 0.1 and len(read_metrics(run)) == 1


def test_ode_blocks_report_forward_and_backward_nfe(tmp_path):
    options = {"width": 4, "method": "rk4", "step_size": 0.5}  # 2 steps × 4 stages per solve
    summary = train(
        _config(model="soblock", model_options=options, epochs=1, eval_subset=0),
        tmp_path / "run",
        progress=False,
    )
    record = summary.final
    assert record["nfe_forward_per_batch"] == 8 and record["nfe_backward_per_batch"] == 8
    assert record["nfe_forward"] == 16 and record["batches"] == 2 and record["test_acc"] is None


# ----------------------------------------------------------------- command line
def test_cli_trains_one_short_epoch_and_refuses_bad_input(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--run-dir", str(run), "--model-opt", "width=4", "--epochs", "1"]
    argv += ["--max-steps-per-epoch", "2", "--batch-size", "16", "--eval-subset", "32"]
    argv += ["--device", "cpu", "--no-progress-bar"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "| 1 |" in out.out and "epoch 1/1 | loss" in out.err
    assert json.loads((run / "config.json").read_text())["model_options"] == {"width": 4}
    (record,) = read_metrics(run)
    for key in ("epoch", "loss", "train_acc", "test_acc", "lr", "nfe_forward", "seconds"):
        assert key in record
    assert (run / "checkpoints" / "epoch-0001.safetensors").exists()
    before = (run / "config.json").read_bytes()

    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("epoch = 3\n")
    # the same command again: the run is finished, nothing to train (as evaluate does)
    assert main(argv) == 0
    assert "already at epoch 1; nothing to train" in capsys.readouterr().out
    cases = [
        ([*argv, "--lr", "0.5"], "holds a different run (it differs in lr); pass --resume"),
        ([*argv, "--overwrite", "--lr", "abc"], "invalid float value: 'abc'"),
        (
            [*argv, "--overwrite", "--model-opt", "width"],
            "expected KEY=VALUE (e.g. eps=8/255), got 'width'",
        ),
        ([*argv, "--overwrite", "--amp", "bf16"], "amp='bf16' needs a CUDA device"),
        ([*argv, "--overwrite", "--channels-last"], "channels_last is a CUDA option"),
        ([*argv, "--overwrite", "--config", str(bad_toml)], "unknown config key(s) 'epoch'"),
        ([*argv, "--overwrite", "--defense", "nope"], "unknown defense 'nope'"),
        (["train", "--resume", str(run), "--lr", "0.5"], "cannot resume"),
    ]
    for case, message in cases:
        try:
            code = main(case)
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, (case, err)
    assert (run / "config.json").read_bytes() == before

    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress-bar"]) == 0
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
    assert os.path.exists(run / "checkpoints" / "epoch-0002.json")


def test_trace_eq16_records_lads_ratio_every_epoch_and_keeps_resume_bitwise(tmp_path):
    """LAD Fig. 2's quantity for any defense; measured in eval mode, it changes nothing a
    resumed run computes."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(_config(epochs=2, trace_eq16=True), full, progress=False)
    train(_config(epochs=1, trace_eq16=True), cut, progress=False)
    train(_config(epochs=2, trace_eq16=True), cut, resume=True, progress=False)
    records = read_metrics(full)
    assert all(r["eq16_ratio"] > 0 and math.isfinite(r["eq16_ratio"]) for r in records)
    strip = [{k: v for k, v in r.items() if "seconds" not in k} for r in read_metrics(cut)]
    assert strip == [{k: v for k, v in r.items() if "seconds" not in k} for r in records]
