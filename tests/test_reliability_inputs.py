"""Untrusted input: nothing robustode reads can run code, bad input is one clear line, and no
command writes outside the folder it was given or over results it did not make.

- checkpoints crafted to run code when unpickled (``torch.save`` zips, legacy pickles, pickle
  bytes renamed ``.safetensors``/``.json``, a run folder whose weights were swapped with their
  hash) are refused by every reader, and the code never runs;
- weights with missing, unexpected or mis-shaped tensors are refused with each one named;
- a table of bad inputs across the CLI and the Python API, each answered with the exit code or
  exception type and one line saying what was wrong and what is accepted;
- every writing command, run from an empty working folder, writes only into its output folder;
- a folder holding another command's results, or results of other settings, is refused unless
  ``--overwrite``.

Tiny models (width-4 ResNet10 and SOBlock with rk4) on the digits data, one thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from robustode.attacks import AttackInputError, create_attack
from robustode.cli import main
from robustode.defenses import DefenseConfigError, create_defense
from robustode.evaluate.audit import audit
from robustode.evaluate.runner import run_evaluation
from robustode.evaluate.suites import parse_spec
from robustode.evaluate.target import load_target
from robustode.experiments import demo as demo_module
from robustode.experiments.reproduce import reproduce
from robustode.experiments.stability import StabilitySettings
from robustode.models import create_model
from robustode.models.registry import ModelConfigError
from robustode.ode import odeint
from robustode.outputs import OutputFolder
from robustode.train import (
    CheckpointError,
    ConfigError,
    TrainConfig,
    build_config,
    load_model,
    train,
)
from robustode.train.checkpoint import read_weights

SRC = Path(__file__).resolve().parents[1] / "src" / "robustode"

TINY_TRAIN = {
    "data": "digits",
    "batch_size": 16,
    "max_steps_per_epoch": 2,
    "eval_subset": 0,
    "epochs": 1,
    "device": "cpu",
}
ODE_OPTIONS = {"width": 4, "method": "rk4", "step_size": 0.5}


@dataclass
class Runs:
    """Two tiny trained runs, shared by the module (read, never written, by the tests)."""

    run: Path  # ResNet10, no ODE blocks
    ode: Path  # SOBlock with a fixed-step rk4 block

    @property
    def weights(self) -> Path:
        return self.run / "checkpoints" / "epoch-0001.safetensors"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster than two contended ones
    root = tmp_path_factory.mktemp("runs")
    train(
        TrainConfig.from_dict({**TINY_TRAIN, "model": "resnet10", "model_options": {"width": 4}}),
        root / "resnet10",
        progress=False,
    )
    train(
        TrainConfig.from_dict({**TINY_TRAIN, "model": "soblock", "model_options": ODE_OPTIONS}),
        root / "soblock",
        progress=False,
    )
    yield Runs(root / "resnet10", root / "soblock")
    torch.set_num_threads(threads)


def snapshot(*roots: Path) -> dict[Path, bytes | None]:
    """Every path under ``roots`` with its bytes (None for a folder); a folder's lock file
    is left out: it names the last process that claimed the folder, refused or not."""
    tree: dict[Path, bytes | None] = {}
    for root in roots:
        for path in root.rglob("*"):
            if path.name == "lock" and path.parent.name == ".robustode":
                continue
            tree[path] = None if path.is_dir() else path.read_bytes()
    return tree


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``robustode ARGV`` run in this process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors exit; robustode's return
        code = exc.code
    captured = capsys.readouterr()
    return int(code), captured.out, captured.err


def assert_one_error_line(err: str, *fragments: str) -> None:
    """stderr is exactly one 'robustode: error:' line holding every fragment, no traceback."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("robustode: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ===================================================================== pickles
class _Payload:
    """Unpickling this calls ``os.mkdir(marker)``: any file holding it runs code when loaded
    by pickle (``torch.load(weights_only=False)``, ``pickle.load``, ``np.load(allow_pickle)``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.mkdir, (self.marker,))


def craft(kind: str, folder: Path, marker: Path, runs: Runs) -> Path:
    """A checkpoint of ``kind`` that creates ``marker`` when unpickled, under a name robustode
    looks for."""
    payload = {"state_dict": _Payload(marker)}
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "pt-zip":  # torch.save's default: a zip archive holding data.pkl
        path = folder / "model.pt"
        torch.save(payload, path)
    elif kind == "pth-legacy":  # torch.save before 1.6: a bare pickle
        path = folder / "model.pth"
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    elif kind == "ckpt-pickle":
        path = folder / "last.ckpt"
        path.write_bytes(pickle.dumps(payload, protocol=4))
    elif kind == "pickle-as-safetensors":
        path = folder / "weights.safetensors"
        path.write_bytes(pickle.dumps(payload, protocol=2))
    elif kind == "pickle-as-json":
        path = folder / "epoch-0001.json"
        path.write_bytes(pickle.dumps(payload, protocol=5))
    elif kind == "run-folder-swapped":
        # whoever can write the weights can write the hash beside them too
        path = folder / "run"
        shutil.copytree(runs.run, path)
        weights = path / "checkpoints" / "epoch-0001.safetensors"
        weights.write_bytes(pickle.dumps(payload, protocol=2))
        meta_path = path / "checkpoints" / "epoch-0001.json"
        meta = json.loads(meta_path.read_text())
        meta["files"]["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
        meta_path.write_text(json.dumps(meta))
    else:
        raise AssertionError(kind)
    return path


CRAFTED = [
    "pt-zip",
    "pth-legacy",
    "ckpt-pickle",
    "pickle-as-safetensors",
    "pickle-as-json",
    "run-folder-swapped",
]


@pytest.mark.parametrize("kind", CRAFTED)
def test_the_crafted_checkpoints_do_run_code_when_unpickled(kind, tmp_path, runs):
    """The control: each crafted file really runs its payload under a plain unpickler, so the
    refusals below are refusals of working exploits."""
    marker = tmp_path / "marker"
    path = craft(kind, tmp_path / "files", marker, runs)
    if kind == "run-folder-swapped":
        path = path / "checkpoints" / "epoch-0001.safetensors"
    if kind in ("pt-zip", "pth-legacy"):
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.is_dir()


READERS: dict[str, Callable[[Path], Any]] = {
    "read_weights": read_weights,
    "load_model": load_model,
    "load_target": lambda path: load_target(path, data="digits"),
}
CLI_READERS = {
    "cli-evaluate": lambda path, runs: ["evaluate", path, "--data", "digits", "--n", "2"],
    "cli-audit": lambda path, runs: ["audit", path, "--data", "digits", "--n", "2"],
    "cli-steps": lambda path, runs: ["steps", path, "--data", "digits", "--n", "2"],
    "cli-audit-surrogate": lambda path, runs: ["audit", runs.run, "--surrogate", path, "--n", "2"],
}


@pytest.mark.parametrize("reader", [*READERS, *CLI_READERS])
@pytest.mark.parametrize("kind", CRAFTED)
def test_a_checkpoint_that_would_run_code_is_refused_and_never_runs(
    kind, reader, tmp_path, runs, capsys
):
    marker = tmp_path / "marker"
    path = craft(kind, tmp_path / "files", marker, runs)
    out = tmp_path / "out"
    if reader in READERS:
        with pytest.raises(CheckpointError) as err:
            READERS[reader](path)
        message = str(err.value)
        assert "\n" not in message
    else:
        code, stdout, stderr = run_cli([*CLI_READERS[reader](path, runs), "--out", out], capsys)
        assert code == 2 and stdout == ""
        assert_one_error_line(stderr)
        message = stderr
    assert "never unpickles" in message and "accepted: a run folder" in message
    assert not marker.exists()
    assert not out.exists()


def test_no_module_can_unpickle():
    """Every way Python and its libraries unpickle, searched for in the source: the one
    unpickler is CIFAR's, whose find_class allows only array-building globals; torch.load
    only on a line that passes weights_only=True (PyTorch's tensors-only unpickler, for a
    user's --weights)."""
    forbidden = re.compile(
        r"torch\.load\((?!.*weights_only=True)|pickle\.loads?\(|\bUnpickler\(|allow_pickle\s*=\s*True|"
        r"weights_only\s*=\s*False|\bimport (dill|joblib|shelve|marshal|cloudpickle)\b|"
        r"\bnp\.load\((?![^)]*allow_pickle=False)"
    )
    hits = []
    for path in sorted(SRC.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if forbidden.search(line):
                hits.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert hits == [], hits
    cifar = (SRC / "data" / "cifar.py").read_text()
    assert "class _SafeUnpickler(pickle.Unpickler)" in cifar and "def find_class" in cifar


def test_a_cifar_batch_that_would_run_code_is_refused_end_to_end(tmp_path, runs, capsys):
    """The command line's path to CIFAR (evaluate --data cifar10) refuses a tampered batch;
    the crafted batch does run its payload under a plain unpickler."""
    marker = tmp_path / "marker"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = pickle.dumps({b"data": _Payload(marker), b"labels": [0]}, protocol=2)
    (folder / "test_batch").write_bytes(batch)
    pickle.loads(batch)  # the control
    assert marker.is_dir()
    marker.rmdir()
    argv = ["evaluate", runs.weights, "--data", "cifar10", "--data-dir", folder, "--n", "2"]
    code, _, err = run_cli([*argv, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert_one_error_line(err, "refusing to load 'posix.mkdir'", "must hold the official")
    assert not marker.exists()


# ===================================================================== weights that do not fit
def _mutated_weights(runs: Runs, folder: Path, mutation: str) -> Path:
    """The ResNet10 run's weights with tensors removed, added or reshaped, its header kept."""
    state = load_file(runs.weights)
    with safe_open(str(runs.weights), framework="pt") as f:
        metadata = f.metadata()
    if mutation in ("missing", "all"):
        del state["linear.bias"]
    if mutation in ("extra", "all"):
        state["head.weight"] = torch.zeros(3, 2)
    if mutation in ("misshaped", "all"):
        state["stem.0.weight"] = torch.zeros(4, 3, 3, 3)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{mutation}.safetensors"
    save_file(state, path, metadata=metadata)
    return path


EXPECTED_LISTING = {
    "missing": ["missing 1 tensor(s): linear.bias"],
    "extra": ["unexpected 1 tensor(s): head.weight"],
    "misshaped": ["1 tensor(s) of the wrong shape: stem.0.weight expected (4, 1, 3, 3), found "
                  "(4, 3, 3, 3)"],
}  # fmt: skip
EXPECTED_LISTING["all"] = [line for lines in EXPECTED_LISTING.values() for line in lines]


@pytest.mark.parametrize("reader", [*READERS, "cli-evaluate"])
@pytest.mark.parametrize("mutation", list(EXPECTED_LISTING))
def test_weights_that_do_not_fit_the_model_are_listed(mutation, reader, tmp_path, runs, capsys):
    path = _mutated_weights(runs, tmp_path, mutation)
    if reader in READERS:
        with pytest.raises(CheckpointError) as err:
            READERS[reader](path)
        message = str(err.value)
        assert "\n" not in message
    else:
        argv = ["evaluate", path, "--data", "digits", "--n", "2", "--out", tmp_path / "out"]
        code, _, message = run_cli(argv, capsys)
        assert code == 2
        assert_one_error_line(message)
        assert not (tmp_path / "out").exists()
    assert f"{path} does not fit the model its model_config names (resnet10)" in message
    for expected in EXPECTED_LISTING[mutation]:
        assert expected in message
    assert message.count("tensor(s)") == len(EXPECTED_LISTING[mutation])


def test_a_long_mismatch_names_the_first_tensors_and_counts_the_rest(tmp_path, runs):
    state = {f"extra.{i:02d}": torch.zeros(1) for i in range(20)}
    state.update(load_file(runs.weights))
    with safe_open(str(runs.weights), framework="pt") as f:
        metadata = f.metadata()
    save_file(state, tmp_path / "w.safetensors", metadata=metadata)
    with pytest.raises(CheckpointError) as err:
        read_weights(tmp_path / "w.safetensors")
    assert "unexpected 20 tensor(s): extra.00, " in str(err.value)
    assert "extra.11 and 8 more" in str(err.value)


# ===================================================================== the bad-input table
@dataclass
class Bad:
    """One bad input: CLI argv (placeholders filled from the fixture) or an API call, and the
    fragments the one-line message must hold (what was wrong, what is accepted)."""

    argv: list[str] | None = None
    call: Callable[[dict[str, Any]], Any] | None = None
    error: type[BaseException] = ValueError
    says: tuple[str, ...] = ()


def _files(tmp: Path, runs: Runs) -> dict[str, Any]:
    """The bad files and paths the table refers to, by placeholder name."""
    files: dict[str, Any] = {"run": runs.run, "ode": runs.ode, "weights": runs.weights}
    files["out"] = tmp / "out"
    files["missing"] = tmp / "no-such-folder"
    files["empty"] = tmp / "empty"
    files["empty"].mkdir()
    files["marker"] = tmp / "marker"
    for kind in ("pt-zip", "pickle-as-safetensors", "pickle-as-json", "ckpt-pickle"):
        files[kind] = craft(kind, tmp / "crafted", files["marker"], runs)
    for mutation in ("missing", "misshaped"):
        files[f"weights-{mutation}"] = _mutated_weights(runs, tmp / "weights", mutation)
    broken = tmp / "broken-checkpoint" / "epoch-0001.json"
    broken.parent.mkdir()
    broken.write_text(json.dumps({"format": "robustode-checkpoint-1", "epoch": 1}))
    files["broken-checkpoint"] = broken
    # CIFAR-10 folders: absent, garbage, truncated
    garbage = tmp / "garbage" / "cifar-10-batches-py"
    garbage.mkdir(parents=True)
    (garbage / "test_batch").write_bytes(b"these bytes are not a pickle\n" * 3)
    files["cifar-garbage"] = garbage
    truncated = tmp / "truncated" / "cifar-10-batches-py"
    truncated.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": [0] * 20}
    (truncated / "test_batch").write_bytes(pickle.dumps(batch, protocol=2)[:30_000])
    files["cifar-truncated"] = truncated
    files["npz-garbage"] = tmp / "data.npz"
    files["npz-garbage"].write_bytes(b"not a zip archive")
    files["npy-as-npz"] = tmp / "array.npz"
    with files["npy-as-npz"].open("wb") as f:
        np.save(f, np.zeros((2, 1, 8, 8), dtype=np.float32))
    # config files
    configs = {
        "config-wrong-type.toml": 'model = "resnet10"\nepochs = "3"\n',
        "config-unknown-key.json": '{"epochs": 1, "lr_decay": 0.1}',
        "config-bad-syntax.toml": "epochs = \n",
        "config-list.json": "[1, 2]",
        "config-bad-milestones.toml": "milestones = 150\n",
    }
    for name, text in configs.items():
        files[name] = tmp / name
        files[name].write_text(text)
    return files


def _tiny_model_and_points() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A 1-channel width-4 ResNet10 and two 8×8 images in [0, 1] with their labels."""
    model = create_model("resnet10", width=4, in_channels=1).eval()
    return model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1])


def _attack_on(bend: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict], Any]:
    """An API case: FGSM on the tiny model with its images bent by ``bend``."""

    def call(files: dict[str, Any]) -> Any:
        model, x, y = _tiny_model_and_points()
        return create_attack("fgsm")(model, bend(x), y)

    return call


TRAIN = ["train", "--run-dir", "{out}", "--device", "cpu"]

BAD: dict[str, Bad] = {
    # ---- unknown names: model, solver, attack, norm, device, defense
    "cli-train-unknown-model": Bad(
        [*TRAIN, "--model", "resnet11"], says=("unknown model 'resnet11'", "choose one of: ")
    ),
    "cli-train-unknown-solver": Bad(
        [*TRAIN, "--model", "soblock", "--model-opt", "method=rk45"],
        says=("unknown ODE method 'rk45'", "choose one of: dopri5"),
    ),
    "cli-steps-unknown-attack": Bad(
        ["steps", "{ode}", "--attack", "pgd21", "--out", "{out}"],
        says=("unknown attack 'pgd21'", "choose one of: fgsm"),
    ),
    "cli-evaluate-unknown-device": Bad(
        ["evaluate", "{run}", "--device", "tpu", "--out", "{out}"],
        says=("got 'tpu'", "device must be auto, cpu, cuda or cuda:N"),
    ),
    "cli-evaluate-unknown-norm": Bad(
        ["evaluate", "{run}", "--attacks", "pgd20-linf:norm=l3", "--out", "{out}"],
        says=("unknown norm 'l3'", "choose one of: linf, l2"),
    ),
    "api-create_model-unknown": Bad(
        call=lambda f: create_model("resnet11"),
        error=ModelConfigError,
        says=("unknown model 'resnet11'", "choose one of: "),
    ),
    "api-create_defense-unknown": Bad(
        call=lambda f: create_defense("madry"),
        error=DefenseConfigError,
        says=("unknown defense 'madry'", "choose one of: lad"),
    ),
    # ---- ε: negative, absurd, not a number
    "cli-evaluate-negative-eps": Bad(
        ["evaluate", "{run}", "--attacks", "pgd20-linf:eps=-1", "--out", "{out}"],
        says=("eps=-1", "eps must be a finite number > 0, got -1"),
    ),
    "cli-evaluate-absurd-eps": Bad(
        ["evaluate", "{run}", "--attacks", "pgd20-linf:eps=8", "--out", "{out}"],
        says=("an L∞ eps of 8 exceeds the box width 1.0", "give eps in pixel units"),
    ),
    "cli-audit-absurd-eps": Bad(
        ["audit", "{run}", "--eps", "8", "--out", "{out}"],
        says=("got '8'", "expected a radius in (0, 1] such as 0.031 or 8/255"),
    ),
    "cli-steps-negative-eps": Bad(
        ["steps", "{ode}", "--eps=-0.1", "--out", "{out}"],
        says=("got '-0.1'", "expected a positive number"),
    ),
    "api-attack-nan-eps": Bad(
        call=lambda f: create_attack("pgd20-linf", eps=float("nan")),
        says=("got nan", "eps must be a finite number > 0"),
    ),
    "api-audit-zero-eps": Bad(
        call=lambda f: audit(*_tiny_model_and_points(), eps=0.0),
        says=("got 0.0", "eps must be a number in (0, 1]"),
    ),
    # ---- tolerances ≤ 0, zero steps, zero sizes
    "cli-models-zero-rtol": Bad(
        ["models", "soblock", "rtol=0"], says=("got 0", "rtol must be a number > 0")
    ),
    "cli-steps-negative-tol": Bad(
        ["steps", "{ode}", "--tol=0.1,-0.01", "--out", "{out}"],
        says=("got '0.1,-0.01'", "expected a comma-separated list of positive numbers"),
    ),
    "api-odeint-zero-tolerances": Bad(
        call=lambda f: odeint(
            lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), rtol=0.0, atol=0.0
        ),
        says=("rtol and atol cannot both be 0",),
    ),
    "api-stability-zero-tol": Bad(
        call=lambda f: StabilitySettings(tol=0.0),
        says=("tol=0.0", "delta and tol must be numbers > 0"),
    ),
    "cli-attacks-zero-steps": Bad(
        ["attacks", "pgd20-linf", "steps=0"], says=("got 0", "steps must be an integer ≥ 1")
    ),
    "cli-audit-zero-images": Bad(
        ["audit", "{run}", "--n", "0", "--out", "{out}"], says=("got 0", "--n must be ≥ 1")
    ),
    "api-run_evaluation-zero-batch": Bad(
        call=lambda f: run_evaluation(
            *_tiny_model_and_points(), [parse_spec("fgsm")], f["out"], batch_size=0
        ),
        says=("got 0", "batch_size must be an integer ≥ 1"),
    ),
    # ---- data folders: missing, corrupt, truncated; npz that is not one
    "cli-evaluate-cifar-missing": Bad(
        ["evaluate", "{weights}", "--data", "cifar10", "--data-dir", "{missing}", "--out", "{out}"],
        says=("CIFAR-10 not found", "expected the folder"),
    ),
    "cli-evaluate-cifar-corrupt": Bad(
        [
            "evaluate",
            "{weights}",
            "--data",
            "cifar10",
            "--data-dir",
            "{cifar-garbage}",
            "--out",
            "{out}",
        ],
        says=("test_batch is truncated or corrupt", "must hold the official python-format"),
    ),
    "cli-evaluate-cifar-truncated": Bad(
        [
            "evaluate",
            "{weights}",
            "--data",
            "cifar10",
            "--data-dir",
            "{cifar-truncated}",
            "--out",
            "{out}",
        ],
        says=("test_batch is truncated or corrupt", "files of cifar-10-python.tar.gz"),
    ),
    "cli-evaluate-npz-garbage": Bad(
        ["evaluate", "{weights}", "--data", "npz", "--data-dir", "{npz-garbage}", "--out", "{out}"],
        says=("is not a .npz archive", "root must be the path of a .npz holding x and y"),
    ),
    "cli-evaluate-npy-as-npz": Bad(
        ["evaluate", "{weights}", "--data", "npz", "--data-dir", "{npy-as-npz}", "--out", "{out}"],
        says=("is not a .npz archive", "a zip, as numpy.savez writes"),
    ),
    "cli-evaluate-bare-weights-no-data": Bad(
        ["evaluate", "{weights}", "--out", "{out}"],
        says=("does not say which dataset", "pass --data (cifar10, cifar100, digits or npz)"),
    ),
    # ---- checkpoints: absent, empty, pickles, damaged, not fitting
    "cli-evaluate-missing-path": Bad(
        ["evaluate", "{missing}", "--out", "{out}"],
        says=("does not exist", "accepted: a run folder, a checkpoint .json"),
    ),
    "cli-evaluate-empty-folder": Bad(
        ["evaluate", "{empty}", "--out", "{out}"],
        says=("holds no checkpoint (checkpoints/epoch-N.json)", "accepted: a run folder"),
    ),
    "cli-evaluate-torch-save-pt": Bad(
        ["evaluate", "{pt-zip}", "--out", "{out}"],
        says=("is a zip archive (the format torch.save writes", "accepted: a run folder"),
    ),
    "cli-evaluate-pickle-as-safetensors": Bad(
        ["evaluate", "{pickle-as-safetensors}", "--out", "{out}"],
        says=("is a pickle", "never unpickles", "accepted: a run folder"),
    ),
    "cli-evaluate-pickle-as-json": Bad(
        ["evaluate", "{pickle-as-json}", "--out", "{out}"],
        says=("is a pickle", "never unpickles", "accepted: a run folder"),
    ),
    "cli-evaluate-checkpoint-json-without-files": Bad(
        ["evaluate", "{broken-checkpoint}", "--out", "{out}"],
        says=("is a damaged robustode-checkpoint-1 file", "'files'"),
    ),
    "cli-evaluate-weights-missing-tensor": Bad(
        ["evaluate", "{weights-missing}", "--data", "digits", "--out", "{out}"],
        says=("does not fit the model", "missing 1 tensor(s): linear.bias"),
    ),
    "cli-audit-weights-misshaped": Bad(
        ["audit", "{weights-misshaped}", "--data", "digits", "--out", "{out}"],
        says=("does not fit the model", "stem.0.weight expected (4, 1, 3, 3), found (4, 3, 3, 3)"),
    ),
    "api-load_model-ckpt": Bad(
        call=lambda f: load_model(f["ckpt-pickle"]),
        error=CheckpointError,
        says=("is a pickle", "accepted: a run folder"),
    ),
    # ---- images and labels an attack cannot take
    "api-attack-images-above-1": Bad(
        call=_attack_on(lambda x: x * 255),
        error=AttackInputError,
        says=("images must lie in [0, 1]", "pass raw pixels"),
    ),
    "api-attack-uint8-images": Bad(
        call=_attack_on(lambda x: (x * 255).to(torch.uint8)),
        error=AttackInputError,
        says=("got torch.uint8", "images must be a floating-point tensor"),
    ),
    "api-attack-wrong-channels": Bad(
        call=_attack_on(lambda x: x.expand(2, 3, 8, 8)),
        error=AttackInputError,
        says=("got (2, 3, 8, 8)", "images must have shape (N, 1, H, W)"),
    ),
    "api-attack-unbatched-images": Bad(
        call=_attack_on(lambda x: x[:, 0]),
        error=AttackInputError,
        says=("got (2, 8, 8)", "images must have shape (N, 1, H, W)"),
    ),
    # ---- config files: unknown keys, wrong types, not TOML / not a table
    "cli-train-config-wrong-type": Bad(
        [*TRAIN, "--config", "{config-wrong-type.toml}"],
        says=("got '3' (str)", "epochs must be an integer"),
    ),
    "cli-train-config-unknown-key": Bad(
        [*TRAIN, "--config", "{config-unknown-key.json}"],
        says=("unknown config key(s) 'lr_decay'", "accepted: model, "),
    ),
    "cli-train-config-bad-syntax": Bad(
        [*TRAIN, "--config", "{config-bad-syntax.toml}"],
        says=("is not valid TOML", "line 1"),
    ),
    "cli-train-config-not-a-table": Bad(
        [*TRAIN, "--config", "{config-list.json}"], says=("must hold a table of keys",)
    ),
    "api-build_config-wrong-type": Bad(
        call=lambda f: build_config(file=f["config-bad-milestones.toml"]),
        error=ConfigError,
        says=("got 150", "milestones must be a list of integers"),
    ),
    # ---- commands given what they cannot work on
    "cli-steps-not-a-gradient-attack": Bad(
        ["steps", "{ode}", "--attack", "spsa", "--out", "{out}"],
        says=("'spsa' is not a projected-gradient attack", "e.g. pgd1000-linf"),
    ),
}


def _fill(argv: list[str], files: dict[str, Any]) -> list[str]:
    return [re.sub(r"\{([^}]+)\}", lambda m: str(files[m.group(1)]), a) for a in argv]


def test_the_table_holds_enough_bad_inputs():
    cli = sum(case.argv is not None for case in BAD.values())
    assert len(BAD) >= 35 and cli >= 20 and len(BAD) - cli >= 10, (len(BAD), cli)


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_line_saying_what_was_wrong_and_what_is_accepted(
    name, tmp_path, runs, capsys
):
    case = BAD[name]
    files = _files(tmp_path, runs)
    before = snapshot(runs.run, runs.ode)
    if case.argv is not None:
        code, stdout, err = run_cli(_fill(case.argv, files), capsys)
        assert code == 2, (code, err)
        assert_one_error_line(err, *case.says)
        assert stdout == ""
    else:
        assert case.call is not None
        with pytest.raises(case.error) as exc:
            case.call(files)
        message = str(exc.value)
        assert "\n" not in message, message
        for fragment in case.says:
            assert fragment in message, (fragment, message)
    # refused before anything was written, and nothing crafted ever ran
    assert not files["out"].exists()
    assert not files["marker"].exists()
    assert snapshot(runs.run, runs.ode) == before


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["evaluate", "{pickle-as-safetensors}"], "never unpickles"),  # was a SafetensorError
        (["evaluate", "{run}", "--device", "tpu"], "device must be auto, cpu"),  # was exit 1
        (["audit", "{run}", "--eps", "2"], "expected a radius in (0, 1]"),
    ],
    ids=["pickle-as-safetensors", "unknown-device", "absurd-eps"],
)
def test_the_installed_command_prints_no_traceback(argv, says, tmp_path, runs):
    files = _files(tmp_path, runs)
    proc = subprocess.run(
        [sys.executable, "-m", "robustode", *_fill(argv, files), "--out", str(files["out"])],
        capture_output=True,
        text=True,
        check=False,
        env=os.environ.copy(),
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert_one_error_line(proc.stderr, says)
    assert not files["out"].exists() and not files["marker"].exists()


# ===================================================================== where commands write
def test_every_writing_command_writes_only_into_its_output_folder(tmp_path, capsys, monkeypatch):
    """Run from an empty working folder, each command's files all land in the folder it was
    given; nothing appears in the working folder or anywhere else under tmp_path."""
    cwd, out = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run = out / "train"
    commands = {
        "stability": (["stability", "--t0", "1", "2", "--batch", "2", "--size", "4",
                       "--channels", "2", "--out", out / "stability"], out / "stability"),
        "train": (["train", "--run-dir", run, "--model", "soblock", "--device", "cpu",
                   *[a for k, v in ODE_OPTIONS.items() for a in ("--model-opt", f"{k}={v}")],
                   "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "16",
                   "--eval-subset", "0", "--no-progress-bar"], run),
        "evaluate": (["evaluate", run, "--attacks", "fgsm", "--n", "4", "--curve-steps", "0",
                      "--eps-grid", "", "--no-progress-bar", "--out", out / "eval"],
                     out / "eval"),
        "audit": (["audit", run, "--level", "quick", "--n", "4", "--out", out / "audit"],
                  out / "audit"),
        "steps": (["steps", run, "--n", "2", "--iterations", "1", "--no-per-image",
                   "--out", out / "steps"], out / "steps"),
    }  # fmt: skip
    for command, (argv, folder) in commands.items():
        before = snapshot(tmp_path)
        code, _, err = run_cli(argv, capsys)
        assert code == 0, (command, err)
        after = snapshot(tmp_path)
        changed = {p for p in after.keys() | before.keys() if before.get(p) != after.get(p)}
        outside = sorted(str(p) for p in changed if folder not in (p, *p.parents))
        assert outside == [], (command, outside)
        assert any(p.is_file() for p in folder.iterdir()), command
    assert list(cwd.iterdir()) == []


def test_stability_writes_into_runs_stability_by_default_not_the_working_folder(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    argv = ["stability", "--t0", "1", "--batch", "2", "--size", "4", "--channels", "2"]
    code, stdout, _ = run_cli(argv, capsys)
    assert code == 0
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "runs",
        "runs/stability",
        "runs/stability/.robustode",  # the folder's lock and the manifest of robustode's files
        "runs/stability/.robustode/lock",
        "runs/stability/.robustode/manifest.jsonl",
        "runs/stability/stability.json",
    ]
    assert "wrote runs/stability/stability.json" in stdout


# ===================================================================== other results in the way
def test_each_command_refuses_a_folder_holding_another_commands_results(tmp_path, runs, capsys):
    """Pointed at a training run folder (or a training run at an evaluation's folder), each
    writing command refuses and leaves it as it was; --overwrite writes beside it."""
    held = tmp_path / "held"
    shutil.copytree(runs.ode, held)
    evaluation = tmp_path / "evaluation"  # a real evaluation's folder
    assert run_cli(["evaluate", runs.ode, "--attacks", "fgsm", "--n", "2", "--curve-steps",
                    "0", "--eps-grid", "", "--no-progress-bar", "--out", evaluation],
                   capsys)[0] == 0  # fmt: skip
    cases = {
        "evaluate": ["evaluate", runs.ode, "--attacks", "fgsm", "--n", "2", "--curve-steps", "0",
                     "--eps-grid", "", "--no-progress-bar", "--out", held],
        "audit": ["audit", runs.ode, "--level", "quick", "--n", "2", "--out", held],
        "steps": ["steps", runs.ode, "--n", "2", "--iterations", "1", "--no-per-image",
                  "--out", held],
        "stability": ["stability", "--t0", "1", "--batch", "2", "--size", "4", "--channels",
                      "2", "--out", held],
        "train": ["train", "--run-dir", evaluation, "--model", "resnet10", "--model-opt",
                  "width=4", "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size",
                  "16", "--eval-subset", "0", "--device", "cpu", "--no-progress-bar"],
    }  # fmt: skip
    for command, argv in cases.items():
        folder = evaluation if command == "train" else held
        before = snapshot(folder)
        code, _, err = run_cli(argv, capsys)
        assert code == 2, (command, err)
        other = "evaluate" if command == "train" else "train"
        assert_one_error_line(err, f"holds the results of 'robustode {other}'", "--overwrite")
        assert snapshot(folder) == before, command
    # --overwrite: written beside the other command's files, which are kept
    before = snapshot(held)
    code, _, err = run_cli([*cases["stability"], "--overwrite"], capsys)
    assert code == 0, err
    assert (held / "stability.json").is_file()
    kept = {p: b for p, b in before.items() if ".robustode" not in p.parts}
    assert {p: b for p, b in snapshot(held).items() if p in kept} == kept


def test_stability_refuses_a_table_of_other_settings_unless_overwrite(tmp_path, capsys):
    argv = ["stability", "--t0", "1", "--batch", "2", "--size", "4", "--channels", "2", "--out",
            tmp_path]  # fmt: skip
    assert run_cli(argv, capsys)[0] == 0
    first = (tmp_path / "stability.json").read_bytes()
    code, _, err = run_cli([*argv, "--gamma", "0.2"], capsys)
    assert code == 2
    assert_one_error_line(
        err, "holds a stability table of other settings (settings.gamma: 0.1 → 0.2", "--overwrite"
    )
    assert (tmp_path / "stability.json").read_bytes() == first
    assert run_cli(argv, capsys)[0] == 0  # the same settings: recomputed in place
    assert run_cli([*argv, "--gamma", "0.2", "--overwrite"], capsys)[0] == 0
    assert json.loads((tmp_path / "stability.json").read_text())["settings"]["gamma"] == 0.2


def _demo_config(fields: dict[str, Any], seed: int) -> TrainConfig:
    overrides = {"data": "digits", "batch_size": 64, "lr": 0.05, "seed": seed, "device": "cpu"}
    return build_config(overrides={**overrides, **fields})


def write_as(folder: Path, command: str, name: str, data: Any) -> None:
    """Write ``name`` into ``folder`` as robustode's ``command`` would (recorded as its own)."""
    with OutputFolder(folder, command) as claimed:
        claimed.write_json(name, data)


def test_demo_refuses_other_results_and_a_demo_of_other_settings_before_training(tmp_path):
    other_kind = tmp_path / "other"
    write_as(other_kind, "audit", "audit.json", {})
    with pytest.raises(ValueError, match=r"holds the results of 'robustode audit'.*overwrite=True"):
        demo_module.run_demo(other_kind)
    # a user's own demo.json: never replaced, even with overwrite
    users = tmp_path / "users"
    users.mkdir()
    (users / "demo.json").write_text("mine")
    with pytest.raises(ValueError, match=r"holds demo\.json, which robustode did not write"):
        demo_module.run_demo(users, overwrite=True)
    assert (users / "demo.json").read_text() == "mine"
    # a demo trained with seed 0 (its run folders' configs), asked again with seed 1
    demo = tmp_path / "demo"
    for name, _, fields in demo_module.MODELS:
        write_as(demo / name, "train", "config.json", _demo_config(fields, seed=0).to_dict())
    before = snapshot(demo)
    first = demo_module.MODELS[0][0]
    with pytest.raises(
        ValueError, match=rf"other settings \({first} differs in seed\).*overwrite=True"
    ):
        demo_module.run_demo(demo, seed=1)
    assert snapshot(demo) == before
    assert json.loads((other_kind / "audit.json").read_text()) == {}
    code = main(["demo", "--out", str(demo), "--seed", "1"])
    assert code == 2


def test_reproduce_refuses_rows_of_another_scale_before_training(tmp_path, capsys):
    from robustode.experiments.reproduce import SMOKE, get_table, rows_at, slug, train_config

    table = get_table("sonet-t1")
    row = rows_at(table, SMOKE)[0]
    folder = tmp_path / "sonet-t1" / slug(row.label)
    config = train_config(table, row, SMOKE, data_dir=None, device="cpu")
    write_as(folder, "train", "config.json", config.to_dict())
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"holds rows of other settings .*differs in .*data"):
        reproduce("sonet-t1", scale="full", out_dir=tmp_path, data_dir=str(tmp_path / "none"))
    code, _, err = run_cli(["reproduce", "sonet-t1", "--scale", "full", "--out", tmp_path], capsys)
    assert code == 2
    assert_one_error_line(err, "holds rows of other settings", "--overwrite")
    assert snapshot(tmp_path) == before
    write_as(tmp_path / "sonet-t1", "steps", "steps.json", {})
    before = snapshot(tmp_path)
    code, _, err = run_cli(["reproduce", "sonet-t1", "--out", tmp_path], capsys)
    assert code == 2
    assert_one_error_line(err, "holds the results of 'robustode steps'", "--overwrite")
    assert snapshot(tmp_path) == before
