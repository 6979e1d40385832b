"""DDP: ``torchrun --nproc_per_node=2 … train`` on the CPU (gloo) matches one process.

The model is an ODENet with GroupNorm and a fixed-step solver: BatchNorm's
per-rank statistics (SyncBatchNorm has no CPU kernel) and an adaptive
solver's batch-shared step sizes would both make a rank's half-batch compute
something else than the whole batch does, by design rather than by error.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robustode.train import TrainConfig, read_metrics, train

from .train_ddp_worker import NAME

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"width": 4, "num_blocks": 1, "method": "rk4", "step_size": 0.5}
SETTINGS = {
    "model": "odenet",
    "model_options": MODEL,
    "defense": NAME,
    "epochs": 2,
    "batch_size": 32,
    "max_steps_per_epoch": 3,
    "eval_subset": 100,
    "device": "cpu",
}


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # two processes: DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "defense",
    [(NAME, {}), ("lad", {"eta": 200.0})],
    ids=["shifted-step", "lad-eta-follows-the-global-batch"],
)
def test_two_gloo_processes_match_one_process(tmp_path, defense):
    """Also LAD: each rank's g_n is the mean over its half batch, twice the whole batch's, so
    η must follow the global batch (÷ world size) for the two runs to agree."""
    name, options = defense
    ddp_dir, one_dir = tmp_path / "ddp", tmp_path / "one"
    argv = ["train", "--run-dir", str(ddp_dir), "--model", "odenet", "--defense", name]
    argv += [f"--defense-opt={k}={v}" for k, v in options.items()]
    argv += [f"--model-opt={k}={v}" for k, v in MODEL.items()]
    argv += ["--epochs", "2", "--batch-size", "32", "--max-steps-per-epoch", "3"]
    argv += ["--eval-subset", "100", "--device", "cpu", "--no-progress-bar"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    command += ["--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
    command += ["-m", "tests.train_ddp_worker", *argv]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("| 2 |") == 1  # rank 0 alone prints the table

    settings = {**SETTINGS, "defense": name, "defense_options": options}
    train(TrainConfig(**settings), one_dir, progress=False)

    ddp, one = read_metrics(ddp_dir), read_metrics(one_dir)
    assert [r["epoch"] for r in ddp] == [1, 2]
    for a, b in zip(ddp, one, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
        assert a["test_acc"] == b["test_acc"] and a["train_acc"] == b["train_acc"]
        assert a["samples"] == b["samples"] == 96 and a["batches"] == 3
        assert a["nfe_forward_per_batch"] == b["nfe_forward_per_batch"] == 16  # 2 passes × 8
        if name == NAME:
            assert a["defense"]["points"] == 1.0  # the defense saw the model through DDP
        else:  # the same per-sample offsets (η not divided: 2× larger, 0.13 vs 0.067); a
            # ratio of norms over each half batch, averaged, is close to the whole batch's only
            assert a["defense"]["offset_ratio"] == pytest.approx(
                b["defense"]["offset_ratio"], rel=1e-2
            )
    weights = [load_file(d / "checkpoints" / "epoch-0002.safetensors") for d in (ddp_dir, one_dir)]
    for key, value in weights[1].items():
        torch.testing.assert_close(weights[0][key], value, atol=1e-5, rtol=1e-4)
    assert json.loads((ddp_dir / "config.json").read_text())["defense"] == name
    assert not list(ddp_dir.rglob("*.tmp"))
