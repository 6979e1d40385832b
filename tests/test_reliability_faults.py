"""Faults: killed processes, full or read-only disks, non-finite losses, solvers that give up,
models that return NaN. Each test states its figures in its assertion messages.

The killed processes are real ``python -m robustode`` processes (or a small wrapper that
plants a pause inside one file write, then runs the same command line) killed with
SIGKILL; everything else runs in this process. Models are width-4 ResNet10s on 8×8
images, a few steps per epoch, one thread, so that the whole file stays short.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from robustode import attacks as A
from robustode.cli import main
from robustode.defenses import list_defenses, register_defense
from robustode.evaluate import runner
from robustode.io import TMP_PATTERN
from robustode.models import create_model
from robustode.nn.ode_block import ODEBlock, name_ode_blocks
from robustode.ode import SolverError
from robustode.train import ConfigError, TrainConfig, find_checkpoint, read_metrics
from robustode.train.checkpoint import Checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

# the subprocesses compute on one thread, as this process does (one_thread): bitwise equal
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# ---------------------------------------------------------------- killed training
# A wrapper that runs ``robustode`` with one pause planted in its writes: it writes a
# marker file, then sleeps until the test kills it. argv: STAGE TARGET MARKER robustode-args…
#   torn-tmp       TARGET's temporary file holds half its bytes
#   before-rename  TARGET's temporary file is complete, the rename has not happened
#   before-write   nothing of TARGET is written yet (the files before it are)
#   mid-prune      the JSON of the checkpoint being pruned is deleted, its tensors are not
#   torn-metrics   metrics.jsonl ends in half a record line
# TARGET is NAME@K: the K-th write of a file called NAME (K-th epoch's line for metrics).
PAUSE_WRAPPER = """
import os, sys, time
from pathlib import Path

import robustode.io as rio
import robustode.train.checkpoint as checkpoint
import robustode.train.loop as loop
import robustode.outputs as outputs
import robustode.train.run_folder as run_folder
from robustode.cli import main

stage, target, marker = sys.argv[1], sys.argv[2], Path(sys.argv[3])
name, _, nth = target.partition("@")
nth = int(nth or 1)
seen = {"count": 0}


def pause():
    marker.write_text(stage)
    time.sleep(600)  # until SIGKILL


def hit(file_name):
    if file_name != name:
        return False
    seen["count"] += 1
    return seen["count"] == nth


def write_tmp(data, path):
    with rio.temporary_name(path).open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


original_write = rio.write_bytes_atomic


def write_bytes_atomic(data, path):
    path = Path(path)
    if stage in ("torn-tmp", "before-rename", "before-write") and hit(path.name):
        if stage == "torn-tmp":
            write_tmp(data[: len(data) // 2], path)
        elif stage == "before-rename":
            write_tmp(data, path)
        pause()
    return original_write(data, path)


rio.write_bytes_atomic = write_bytes_atomic
checkpoint.write_bytes_atomic = write_bytes_atomic
outputs.write_bytes_atomic = write_bytes_atomic

original_unlink = Path.unlink


def unlink(self, missing_ok=False):
    original_unlink(self, missing_ok=missing_ok)
    if stage == "mid-prune" and hit(self.name):
        pause()


Path.unlink = unlink
original_append = run_folder.append_metrics


def append_metrics(folder, record):
    if stage == "torn-metrics" and record["epoch"] == nth:
        import json

        line = json.dumps(record) + "\\n"
        with (folder.root / "metrics.jsonl").open("a") as f:
            f.write(line[: len(line) // 2])
            f.flush()
            os.fsync(f.fileno())
        pause()
    original_append(folder, record)


loop.append_metrics = append_metrics
sys.exit(main(sys.argv[4:]))
"""

EPOCHS = 4
TRAIN = {
    "model": "resnet10",
    "model_options": {"width": 4},
    "data": "npz",
    "defense": "noise",  # draws from the global RNG every step: the RNG state must resume
    "augment": True,  # the loader's crops and flips follow (seed, epoch)
    "epochs": EPOCHS,
    "batch_size": 16,
    "max_steps_per_epoch": 3,
    "eval_subset": 0,
    "keep_checkpoints": 2,  # pruning happens, and can be interrupted
    "device": "cpu",
}

# (stage, target) of the trials that are killed inside a write, and what the kill leaves
MID_WRITE = [
    ("torn-tmp", "epoch-0002.safetensors@1"),  # half a weights file, under its .tmp name
    ("before-write", "epoch-0003.json@1"),  # both tensor files of epoch 3, no JSON
    ("before-rename", "latest.json@3"),  # epoch 3 complete, latest.json still names 2
    ("mid-prune", "epoch-0001.json@1"),  # epoch 1's JSON deleted, its tensors not yet
    ("torn-metrics", "metrics.jsonl@2"),  # half of epoch 2's line in metrics.jsonl
]
RANDOM_TRIALS = 5


def _npz(path: Path) -> Path:
    """64 random 8×8 grey images of 10 classes: no dataset import in the subprocesses."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 8, 8, 1), dtype=np.uint8)
    np.savez(path, x=x, y=rng.integers(0, 10, size=64))
    return path


def _train_argv(run: Path, data: Path) -> list[str]:
    argv = ["train", "--run-dir", str(run), "--no-progress-bar"]
    for key, value in TRAIN.items():
        flag = "--" + key.replace("_", "-")
        if key == "model_options":
            argv += [f"--model-opt={k}={v}" for k, v in value.items()]
        elif isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return [*argv, "--data-dir", str(data)]


def _tensors(run: Path, epoch: int) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint: weights, optimiser buffers, RNG states."""
    folder = run / "checkpoints"
    stem = f"epoch-{epoch:04d}"
    weights = load_file(folder / f"{stem}.safetensors")
    state = load_file(folder / f"{stem}.state.safetensors")
    return {**{f"w.{k}": v for k, v in weights.items()}, **{f"s.{k}": v for k, v in state.items()}}


def _untimed(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in read_metrics(run)]


def _listing(run: Path) -> list[str]:
    return sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Poll until ``path`` exists; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            return path.exists()
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.002)
    return True


def _kill(process: subprocess.Popen) -> bool:
    """SIGKILL ``process``; True if it was still running (a real kill)."""
    alive = process.poll() is None
    if alive:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=180)
    return alive and process.returncode == -signal.SIGKILL


def _interrupted_write(folder: Path) -> bool:
    """Whether ``folder`` shows a checkpoint write cut short: a *.tmp, tensor files with no
    JSON, or a checkpoint newer than the one latest.json names."""
    if not folder.is_dir():
        return False
    if any(p.suffix == ".tmp" for p in folder.iterdir()):
        return True
    epochs_json = {int(p.name[6:10]) for p in folder.glob("epoch-*.json")}
    epochs_any = {int(p.name[6:10]) for p in folder.glob("epoch-*")}
    latest = folder / "latest.json"
    named = json.loads(latest.read_text())["epoch"] if latest.exists() else None
    return epochs_any != epochs_json or (bool(epochs_json) and named != max(epochs_json))


def _trial(run: Path, command: list[str], signal_file: Path, delay: float) -> tuple[bool, str]:
    """Start ``command``, wait for ``signal_file``, wait ``delay`` s more, SIGKILL it; then
    check what --resume will find. (Was it killed, the checkpoint epoch found or '-'.)"""
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        started = _wait_for(signal_file, process)
        time.sleep(delay)
        killed = _kill(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stderr = process.stderr.read().decode()
        process.stderr.close()
    assert started, f"{command[1:4]} ended before {signal_file.name}: {stderr[-2000:]}"
    # what --resume will find: a checkpoint that verifies (the SHA-256 of both tensor
    # files), never a *.tmp; or none, if the kill came before the first one was complete
    folder = run / "checkpoints"
    found = find_checkpoint(folder)
    if found is None:
        assert not list(folder.glob("epoch-*.json")), _listing(run)
        return killed, "-"
    meta = json.loads(found.path.read_text())
    assert found.path.suffix == ".json" and found.path.parent == folder, found.path
    assert not any(f["name"].endswith(".tmp") for f in meta["files"].values()), meta["files"]
    return killed, str(found.epoch)


@dataclass
class Reference:
    """The uninterrupted run every interrupted one must end equal to."""

    run: Path
    data: Path
    seconds: float  # its time once set up: the window random kills are drawn from
    tensors: dict[str, torch.Tensor]
    metrics: list[dict]
    files: list[str]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    folder = tmp_path_factory.mktemp("reference")
    data = _npz(folder / "images.npz")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # torch.optim imports torch._dynamo on first use, which a subprocess does before it
        # writes config.json, the moment from which kills are timed: not part of the window
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main(_train_argv(folder / "run", data)) == 0
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    run = folder / "run"
    return Reference(run, data, seconds, _tensors(run, EPOCHS), _untimed(run), _listing(run))


def _assert_equals_reference(run: Path, reference: Reference, what: str) -> None:
    got = _tensors(run, EPOCHS)
    assert got.keys() == reference.tensors.keys(), what
    differ = [k for k, v in reference.tensors.items() if not torch.equal(got[k], v)]
    assert not differ, f"{what}: tensors differ: {differ[:5]}"
    assert _untimed(run) == reference.metrics, f"{what}: metrics differ"
    assert _listing(run) == reference.files, f"{what}: files {_listing(run)}"


@pytest.mark.slow  # dozens of killed training processes
def test_sigkill_at_random_moments_and_mid_write_never_loses_a_checkpoint(
    reference, tmp_path, capsys
):
    data, window = reference.data, reference.seconds
    wrapper = tmp_path / "pause_wrapper.py"
    wrapper.write_text(PAUSE_WRAPPER)

    rng = random.Random(8)
    trials = [(stage, target) for stage, target in MID_WRITE]
    trials += [("random", None)] * RANDOM_TRIALS
    rng.shuffle(trials)
    killed = planted = cut_writes = from_checkpoint = finished_first = 0
    notes = []
    index = 0
    while trials:
        stage, target = trials.pop(0)
        run = tmp_path / f"trial-{index:02d}"
        argv = _train_argv(run, data)
        if stage == "random":
            command = [sys.executable, "-m", "robustode", *argv]
            signal_file = run / "config.json"  # written once set up, just before epoch 1
            delay = rng.uniform(0.0, window)
        else:
            signal_file = tmp_path / f"paused-{index:02d}"
            command = [sys.executable, str(wrapper), stage, target, str(signal_file), *argv]
            delay = 0.0
        was_killed, found = _trial(run, command, signal_file, delay)
        what = f"{stage}:{target or f'{delay:.2f}s'}"
        assert was_killed or stage == "random", f"trial {index} ({what}) was not killed"
        if not was_killed:  # it finished before the kill came: another, in a shorter window
            finished_first += 1
            assert finished_first <= 2 * RANDOM_TRIALS, f"{finished_first} runs outran the kill"
            window /= 2
            trials.append((stage, target))
        killed += was_killed
        planted += was_killed and stage != "random"
        cut = _interrupted_write(run / "checkpoints")
        cut_writes += cut
        from_checkpoint += found != "-"
        notes.append(f"{what}→{found}{' (cut write)' if cut else ''}")

        assert main(["train", "--resume", str(run), "--no-progress-bar"]) == 0, capsys.readouterr()
        capsys.readouterr()
        _assert_equals_reference(run, reference, f"trial {index} ({notes[-1]})")
        index += 1

    figures = (
        f"{killed} training runs killed by SIGKILL ({planted} paused inside a write, "
        f"{killed - planted} at random moments; {cut_writes} kills left a checkpoint write "
        f"cut short), {from_checkpoint} resumed from a verified checkpoint, the others from "
        f"epoch 1; {finished_first} more finished before their kill; every run resumed "
        f"to bitwise the uninterrupted weights, optimiser and RNG state, the same metrics and "
        f"files; nothing lost. Trials (stage→checkpoint epoch found): {'; '.join(notes)}"
    )
    print(figures)
    assert killed >= 10 and planted >= 3 and cut_writes >= 3, figures


# ---------------------------------------------------------------- killed evaluation
EVAL_ARGS = ["--n", "40", "--batch-size", "8", "--seed", "3", "--no-progress-bar"]
EVAL_ARGS += ["--attacks", "pgd20-linf,spsa:iterations=3,samples=8"]  # spsa: seeded per batch
EVAL_ARGS += ["--curve-steps", "0", "--eps-grid", ""]


def _batch_files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("batch-*.json")}


@pytest.mark.slow  # killed evaluation processes
def test_sigkill_mid_evaluation_continues_from_the_finished_batches(reference, tmp_path, capsys):
    from robustode.evaluate.report import strip_timings

    wrapper = tmp_path / "pause_wrapper.py"
    wrapper.write_text(PAUSE_WRAPPER)
    full = tmp_path / "full"
    started = time.perf_counter()
    assert main(["evaluate", str(reference.run), "--out", str(full), *EVAL_ARGS]) == 0
    seconds = time.perf_counter() - started  # the kill comes within its first quarter
    capsys.readouterr()
    want = strip_timings(json.loads((full / "report.json").read_text()))
    total = len(_batch_files(full))

    rng = random.Random(9)
    figures = []
    for name, stage in (("random", None), ("paused", "torn-tmp")):
        out = tmp_path / name
        argv = ["evaluate", str(reference.run), "--out", str(out), *EVAL_ARGS]
        if stage is None:  # a random moment once the first batch is saved
            command = [sys.executable, "-m", "robustode", *argv]
            signal_file = out / "points" / "pgd20-linf" / "batch-00000.json"
            delay = rng.uniform(0.0, seconds / 4)
        else:  # half of the spsa's third batch file written under its .tmp name
            signal_file = tmp_path / "pause-marker"
            command = [sys.executable, str(wrapper), stage, "batch-00002.json@2"]
            command += [str(signal_file), *argv]
            delay = 0.0
        process = subprocess.Popen(
            command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            assert _wait_for(signal_file, process), process.stderr.read().decode()[-2000:]
            time.sleep(delay)
            assert _kill(process), f"the {name} evaluation finished before the kill"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stderr.close()
        done = _batch_files(out)
        assert 0 < len(done) < total, (name, sorted(done))
        assert stage is None or list(out.rglob("*.tmp")), "the pause left no torn .tmp"

        assert main(argv) == 0
        err = capsys.readouterr().err
        reused = sum(
            int(line.split("; ")[1].split()[0])
            for line in err.splitlines()
            if "from an earlier" in line
        )
        assert reused == len(done), err
        after = _batch_files(out)
        assert {k: after[k] for k in done} == done, "a finished batch was recomputed"
        got = strip_timings(json.loads((out / "report.json").read_text()))
        assert got == want, f"the {name} kill: the report differs from an uninterrupted one"
        assert not list(out.rglob("*.tmp")), "a torn .tmp outlived the rerun"
        figures.append(f"{name} kill: {len(done)} of {total} batches kept, {total - len(done)} run")
    print("; ".join(figures))


# ---------------------------------------------------------------- full or read-only disk
class _FaultyDisk:
    """Writes under ``root`` fail as on a full (ENOSPC) or read-only (EROFS) file system,
    from the first write to a file named ``trigger`` on (None: from the start).

    Run as root, chmod stops nothing, so the file operations themselves are patched, the
    way the kernel answers: on a full disk opening a file works and writing it fails,
    renames and deletions still work; on a read-only one opening for writing, creating
    a folder, renaming and deleting (even a file that does not exist) all fail.
    ``before`` holds the SHA-256 of every file at the moment of the first failure.
    """

    _WRITE_MODES = frozenset("wax+")

    def __init__(self, monkeypatch, root: Path, code: int, trigger: str | None = None) -> None:
        self.root, self.code, self.trigger = root.resolve(), code, trigger
        self.failing = trigger is None
        self.failures = 0
        self.before: dict[str, str] | None = self._hashes() if self.failing else None
        open_, mkdir = io.open, os.mkdir
        monkeypatch.setattr(io, "open", self._wrap_open(open_))
        monkeypatch.setattr(os, "mkdir", self._wrap_mkdir(mkdir))
        for name in ("replace", "rename", "unlink", "remove", "rmdir"):
            monkeypatch.setattr(os, name, self._wrap_change(getattr(os, name)))

    def _hashes(self) -> dict[str, str]:
        return {
            p.relative_to(self.root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(self.root.rglob("*"))
            # the folder lock is taken with os.open, which this simulation does not reach (on
            # a real read-only disk the claim itself fails with one 'cannot write' line)
            if p.is_file() and p.suffix != ".tmp" and p.name != "lock"
        }

    def _ours(self, path) -> bool:
        try:
            return Path(os.fsdecode(path)).resolve().is_relative_to(self.root)
        except TypeError:  # a file descriptor
            return False

    def _fail(self, path) -> OSError:
        if self.before is None:
            self.before = self._hashes()
        self.failures += 1
        return OSError(self.code, os.strerror(self.code), os.fsdecode(path))

    def _wrap_open(self, real):
        def open_(file, mode="r", *args, **kwargs):
            writing = bool(self._WRITE_MODES & set(mode)) and self._ours(file)
            # a temporary file's name is NAME.<pid>.<random>.tmp: the trigger names NAME.tmp
            name = TMP_PATTERN.sub(".tmp", Path(os.fsdecode(file)).name)
            if writing and not self.failing and name == self.trigger:
                self.failing = True
            if not (writing and self.failing):
                return real(file, mode, *args, **kwargs)
            if self.code == errno.EROFS:
                raise self._fail(file)
            handle = real(file, mode, *args, **kwargs)  # a full disk still creates the file
            disk = self

            class Full:
                def __getattr__(self, name):
                    return getattr(handle, name)

                def __enter__(self):
                    return self

                def __exit__(self, *exc):
                    handle.close()

                def write(self, data):
                    raise disk._fail(file)

            return Full()

        return open_

    def _wrap_mkdir(self, real):
        def mkdir(path, *args, **kwargs):
            if self.failing and self.code == errno.EROFS and self._ours(path):
                if os.path.lexists(path):
                    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
                raise self._fail(path)
            return real(path, *args, **kwargs)

        return mkdir

    def _wrap_change(self, real):
        def change(path, *args, **kwargs):
            if self.failing and self.code == errno.EROFS and self._ours(path):
                raise self._fail(path)
            return real(path, *args, **kwargs)

        return change

    def check_nothing_damaged(self) -> str:
        """Every file there before the first failure is byte-identical; no *.tmp is left."""
        assert self.before is not None and self.failures, "no write failed"
        now = self._hashes()
        damaged = [name for name, digest in self.before.items() if now.get(name) != digest]
        assert not damaged, f"damaged or deleted: {damaged}"
        leftovers = [p.name for p in self.root.rglob("*.tmp")]
        assert not leftovers, f"temporary files left: {leftovers}"
        return f"{len(self.before)} files intact"


def _interrupt_after(function, calls: int):
    """``function``, except that the call after ``calls`` calls raises KeyboardInterrupt."""
    count = {"calls": 0}

    def wrapped(*args, **kwargs):
        count["calls"] += 1
        if count["calls"] > calls:
            raise KeyboardInterrupt
        return function(*args, **kwargs)

    return wrapped


def _one_line_error(capsys, code: int, expected: str = "", exit_code: int = 2) -> str:
    """The single `robustode: error:` line on stderr (no traceback), after exit ``exit_code``."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("robustode: error:")]
    assert code == exit_code and len(lines) == 1, (code, err)
    assert expected in lines[0] and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["ENOSPC", "EROFS"])
def test_training_on_a_full_or_read_only_disk_is_one_error_and_damages_nothing(
    reference, tmp_path, capsys, monkeypatch, code
):
    run = tmp_path / "run"
    argv = _train_argv(run, reference.data)
    if code == errno.ENOSPC:  # the disk fills while epoch 2's checkpoint is being written
        disk = _FaultyDisk(monkeypatch, tmp_path, code, trigger="epoch-0002.safetensors.tmp")
        returned = main(argv)
    else:  # a run stopped after epoch 2, resumed into a folder now read-only
        assert main([*argv, "--epochs", "2"]) == 0
        capsys.readouterr()
        disk = _FaultyDisk(monkeypatch, tmp_path, code)
        returned = main(["train", "--resume", str(run), "--epochs", str(EPOCHS)])
    line = _one_line_error(capsys, returned, os.strerror(code))
    assert "cannot write" in line and str(run) in line, line
    intact = disk.check_nothing_damaged()
    found = find_checkpoint(run / "checkpoints")
    assert found is not None and found.epoch == (1 if code == errno.ENOSPC else 2)

    monkeypatch.undo()  # space freed, or the disk writable again: resume ends as if nothing
    assert main(["train", "--resume", str(run), "--epochs", str(EPOCHS)]) == 0
    capsys.readouterr()
    _assert_equals_reference(run, reference, os.strerror(code))
    print(f"{os.strerror(code)}: {line!r}; {intact}; resumed from epoch {found.epoch}")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["ENOSPC", "EROFS"])
def test_evaluation_on_a_full_or_read_only_disk_is_one_error_and_damages_nothing(
    reference, tmp_path, capsys, monkeypatch, code
):
    out = tmp_path / "eval"
    argv = ["evaluate", str(reference.run), "--out", str(out), *EVAL_ARGS]
    if code == errno.ENOSPC:  # the disk fills while pgd's third batch is being saved
        disk = _FaultyDisk(monkeypatch, tmp_path, code, trigger="batch-00002.json.tmp")
    else:  # an evaluation with saved batches, rerun into a folder now read-only
        with monkeypatch.context() as m:  # Ctrl-C during the fourth batch
            m.setattr(runner, "_run_batch", _interrupt_after(runner._run_batch, 3))
            assert main(argv) == 130
        capsys.readouterr()
        disk = _FaultyDisk(monkeypatch, tmp_path, code)
    line = _one_line_error(capsys, main(argv), os.strerror(code))
    assert "cannot write" in line, line
    intact = disk.check_nothing_damaged()
    kept = len(_batch_files(out))
    assert kept >= 2, kept

    monkeypatch.undo()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "from an earlier run" in err, err
    print(f"{os.strerror(code)}: {line!r}; {intact}; {kept} batches kept")


# ---------------------------------------------------------------- non-finite loss
class _NaNInputs:
    """Cross-entropy, except that at the listed calls (counted from 1 in this defense's
    life) the images are NaN: the loss is NaN and, as when activations overflow, the
    forward pass drags the BatchNorm running statistics to NaN as well."""

    name = "test_nan_inputs"

    def __init__(self, nan_calls: list[int]) -> None:
        self.nan_calls = set(nan_calls)
        self.calls = 0

    def __call__(self, model, x, y):
        self.calls += 1
        if self.calls in self.nan_calls:
            x = x * float("nan")
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        return loss, {"train_correct": float((logits.argmax(1) == y).sum())}


if _NaNInputs.name not in list_defenses():

    @register_defense(_NaNInputs.name, summary="test only: NaN images at given calls")
    def _nan_inputs(*, nan_calls: list[int] = ()) -> _NaNInputs:
        return _NaNInputs(list(nan_calls))


def _nan_argv(run: Path, data: Path, nan_calls: list[int], *extra: str) -> list[str]:
    """The TRAIN run, natural training, 3 steps per epoch, NaN images at ``nan_calls``."""
    argv = [*_train_argv(run, data), "--defense", _NaNInputs.name, "--no-augment"]
    return [*argv, f"--defense-opt=nan_calls={json.dumps(nan_calls)}", *extra]


def test_nonfinite_loss_stops_naming_epoch_and_step_and_keeps_the_last_checkpoint(
    reference, tmp_path, capsys
):
    clean, run = tmp_path / "clean", tmp_path / "run"
    assert main(_nan_argv(clean, reference.data, [], "--epochs", "1")) == 0
    capsys.readouterr()
    # call 5 is epoch 2, step 2 (3 steps per epoch)
    code = main(_nan_argv(run, reference.data, [5]))
    line = _one_line_error(capsys, code)  # a RobustodeError: one line, exit 2
    assert line == (
        "robustode: error: the loss is nan at epoch 2, step 2; training stopped and the last "
        f"good state is checkpoint epoch-0001.json in {run} (--nonfinite-loss skip would "
        "skip such steps)"
    )
    found = find_checkpoint(run / "checkpoints")
    assert found.epoch == 1 and [r["epoch"] for r in read_metrics(run)] == [1]
    assert not list((run / "checkpoints").glob("epoch-0002*"))
    # the checkpoint kept is the good state: what a run without the NaN had after epoch 1
    kept, good = (load_file(d / "checkpoints" / "epoch-0001.safetensors") for d in (run, clean))
    assert kept.keys() == good.keys() and all(torch.equal(kept[k], good[k]) for k in kept)

    # a stopped run may go on with --nonfinite-loss skip (this process counts calls
    # afresh: call 5 is now epoch 3, step 2)
    assert main(["train", "--resume", str(run), "--nonfinite-loss", "skip"]) == 0
    capsys.readouterr()
    assert [r["skipped_steps"] for r in read_metrics(run)] == [0, 0, 1, 0]
    assert json.loads((run / "config.json").read_text())["nonfinite_loss"] == "skip"


def test_nonfinite_loss_skip_leaves_no_trace_of_the_step_and_counts_it(reference, tmp_path, capsys):
    two_steps, run = tmp_path / "two", tmp_path / "run"
    # epoch 1 with its 3rd step skipped is epoch 1 cut to its first 2 steps: the weights,
    # the BatchNorm statistics (which the NaN batch's forward had moved) and the momentum
    argv = _nan_argv(two_steps, reference.data, [], "--epochs", "1", "--max-steps-per-epoch", "2")
    assert main(argv) == 0
    skip = ["--nonfinite-loss", "skip", "--keep-checkpoints", "0"]
    assert main(_nan_argv(run, reference.data, [3, 4], *skip)) == 0
    capsys.readouterr()
    a, b = (load_file(d / "checkpoints" / "epoch-0001.safetensors") for d in (two_steps, run))
    assert a.keys() == b.keys() and any("running_mean" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    sa, sb = (
        load_file(d / "checkpoints" / "epoch-0001.state.safetensors") for d in (two_steps, run)
    )
    momentum = [k for k in sa if k.startswith("optimizer.")]
    assert momentum and all(torch.equal(sa[k], sb[k]) for k in momentum)
    records = read_metrics(run)
    assert [r["skipped_steps"] for r in records] == [1, 1, 0, 0]
    assert [r["batches"] for r in records] == [2, 2, 3, 3]
    assert all(torch.isfinite(t).all() for t in _tensors(run, EPOCHS).values())


def test_nonfinite_loss_skip_still_stops_when_a_whole_epoch_is_skipped(reference, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(_nan_argv(run, reference.data, [4, 5, 6], "--nonfinite-loss", "skip"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) >= 1
    assert err.splitlines()[-1] == (
        "robustode: error: the loss was not finite at any of the 3 steps of epoch 2; training "
        f"stopped and the last good state is checkpoint epoch-0001.json in {run}"
    )
    assert find_checkpoint(run / "checkpoints").epoch == 1


def test_nonfinite_loss_setting_is_checked_and_on_the_command_line(tmp_path, capsys):
    with pytest.raises(ConfigError) as info:
        TrainConfig(nonfinite_loss="ignore")
    assert str(info.value) == "nonfinite_loss must be one of stop, skip, got 'ignore'"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--run-dir", str(tmp_path / "r"), "--nonfinite-loss", "ignore"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "invalid choice: 'ignore'" in err
    assert "choose from 'stop', 'skip'" in err or "choose from stop, skip" in err
    assert TrainConfig().nonfinite_loss == "stop"


DDP_WORKER = """
import os, sys
import torch
import torch.nn.functional as F
from robustode.cli import main
from robustode.defenses import register_defense


class OneRankNaN:
    name = "test_one_rank_nan"

    def __init__(self):
        self.calls = 0

    def __call__(self, model, x, y):
        self.calls += 1
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if os.environ["RANK"] == "1" and self.calls == 2:  # rank 1 alone, step 2
            loss = loss * float("nan")
        return loss, {}


register_defense(OneRankNaN.name, summary="test only")(lambda: OneRankNaN())
torch.set_num_threads(1)
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # two DDP processes
def test_nonfinite_loss_on_one_ddp_rank_is_skipped_on_every_rank(tmp_path):
    # were only rank 1 to skip its backward, rank 0 would wait in DDP's all-reduce forever
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = tmp_path / "ddp_worker.py"
    worker.write_text(DDP_WORKER)
    run = tmp_path / "run"
    argv = ["train", "--run-dir", str(run), "--model", "odenet", "--defense", "test_one_rank_nan"]
    argv += ["--model-opt=width=4", "--model-opt=num_blocks=1", "--model-opt=method=euler"]
    argv += ["--data", "npz", "--data-dir", str(_npz(tmp_path / "images.npz"))]
    argv += ["--epochs", "1", "--batch-size", "16", "--max-steps-per-epoch", "3"]
    argv += ["--eval-subset", "0", "--device", "cpu", "--no-progress-bar"]
    argv += ["--nonfinite-loss", "skip"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    command += ["--master_addr=127.0.0.1", f"--master_port={port}", str(worker), *argv]
    # its own process group: a hang (the failure this guards against) is killed whole
    process = subprocess.Popen(
        command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        _, stderr = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError("the ranks hung: they did not agree to skip the step") from None
    assert process.returncode == 0, stderr.decode()[-3000:]
    (record,) = read_metrics(run)
    assert record["skipped_steps"] == 1 and record["batches"] == 2 and record["samples"] == 32


# ---------------------------------------------------------------- solvers that give up
class _BlowUpBlock(ODEBlock):
    """dy/dt = y², y(0) = 1: infinite at t = 1, so an adaptive solve to t1 = 2 underflows."""

    def __init__(self) -> None:
        super().__init__(method="dopri5", rtol=1e-6, atol=1e-6, t1=2.0)
        self.square = _Square()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.integrate(self.square, x)


class _Square(torch.nn.Module):
    def forward(self, t, y):
        return y**2


def test_a_solver_that_gives_up_names_the_block_the_method_and_the_tolerances():
    x = torch.rand(2, 3, 8, 8)
    # the step budget, spent in one block deep inside the model: that block is named
    model = create_model("sonet", width=4)
    block = model.layer2[0].block
    block.solver = block.solver.replace(rtol=1e-9, atol=1e-9, max_num_steps=2)
    with pytest.raises(SolverError) as info:
        model(x)
    assert str(info.value).startswith(
        "ODE block 'layer2.0.block': ODE solve with dopri5 (rtol=1e-09, atol=1e-09) exceeded "
        "max_num_steps=2"
    ), info.value
    # the same through torchdiffeq, whose own assert says it
    model = create_model("soblock", width=4, tol=1e-9, max_num_steps=2, backend="torchdiffeq")
    with pytest.raises(SolverError) as info:
        model(x)
    assert str(info.value).startswith(
        "ODE block 'stem': ODE solve with dopri5 (rtol=1e-09, atol=1e-09) in torchdiffeq: "
        "max_num_steps exceeded"
    ), info.value
    # a step size that underflows, in a model of one's own, once its blocks are named
    model = torch.nn.Sequential(torch.nn.Identity(), _BlowUpBlock()).double()
    name_ode_blocks(model)
    with pytest.raises(SolverError) as info:
        model(torch.ones(1, dtype=torch.float64))
    message = str(info.value)
    assert message.startswith("ODE block '1': ODE solve with dopri5 (rtol=1e-06, atol=1e-06)")
    assert "step size underflowed" in message and "\n" not in message


def test_a_solver_that_gives_up_in_training_is_one_line_on_the_command_line(
    reference, tmp_path, capsys
):
    argv = _train_argv(tmp_path / "run", reference.data)
    argv += ["--model", "soblock", "--model-opt=tol=1e-9", "--model-opt=max_num_steps=2"]
    code = main(argv)
    line = _one_line_error(capsys, code, exit_code=2)
    assert line.startswith(
        "robustode: error: ODE block 'stem': ODE solve with dopri5 (rtol=1e-09, atol=1e-09) "
        "exceeded max_num_steps=2"
    ), line


# ---------------------------------------------------------------- models that return NaN
class _NaNModel(torch.nn.Module):
    """A linear classifier of 3×4×4 images whose logits are NaN ``always``; for every image
    but the ``clean`` ones; or, ``never`` at first, from when ``broken`` is set."""

    def __init__(self, when: str, clean: torch.Tensor | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(48, 10)
        self.when, self.clean, self.broken = when, clean, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(x.flatten(1))
        if self.when == "always" or self.broken:
            return logits * float("nan")
        if self.when == "perturbed":
            same = (x.flatten(1)[:, None] == self.clean.flatten(1)[None]).all(-1).any(1)
            return torch.where(same[:, None], logits, float("nan"))
        return logits


def _small_attacks() -> dict[str, A.Attack]:
    return {
        "PGD": A.PGD(steps=2),
        "FGSM": A.FGSM(),
        "APGD-CE": A.APGDCE(steps=2),
        "APGD-T": A.APGDT(steps=2, targets=2),
        "Square": A.Square(queries=3),
        "SPSA": A.SPSA(iterations=1, samples=2),
        "CW": A.CarliniWagnerLinf(steps=2),
        "ensemble": A.AttackEnsemble([A.APGDCE(steps=2), A.Square(queries=3)]),
    }


def _break_after_attack(attack: A.Attack, model: _NaNModel) -> None:
    """NaN from the moment the attack has found its points: only the final verdict sees it."""
    last = attack.attacks[-1] if isinstance(attack, A.AttackEnsemble) else attack
    inner = last._attack

    def attack_then_break(*args, **kwargs):
        out = inner(*args, **kwargs)
        model.broken = True
        return out

    last._attack = attack_then_break


@pytest.mark.parametrize(
    "when", ["on the clean images", "during the attack", "on the adversarial images"]
)
def test_nan_logits_are_an_error_for_every_attack_wherever_they_appear(when):
    x = torch.rand(4, 3, 4, 4)
    missed = []
    for name, attack in _small_attacks().items():
        if when == "on the clean images":
            # labels that NaN's argmax (0) does not hit: the clean pass used to call every
            # point misclassified and attack none, so the NaN reached no check
            model, y = _NaNModel("always"), torch.tensor([1, 2, 3, 4])
        else:
            model = _NaNModel("perturbed" if when == "during the attack" else "never", x)
            with torch.no_grad():
                y = model.fc(x.flatten(1)).argmax(1)  # every point clean-correct: attacked
            if when == "on the adversarial images":
                _break_after_attack(attack, model)
        try:
            attack.run(model, x, y)
        except A.AttackError as exc:
            assert f"non-finite logits {when}" in str(exc) and "\n" not in str(exc), exc
            continue
        missed.append(name)
    assert not missed, f"NaN logits {when} gave a robustness number from: {missed}"


def test_nan_logits_in_an_evaluation_are_one_line_on_the_command_line(reference, tmp_path, capsys):
    model = create_model("resnet10", width=4, in_channels=1, num_classes=10, seed=0)
    state = model.state_dict()
    state["linear.weight"] = torch.full_like(state["linear.weight"], float("nan"))
    path = save_checkpoint(
        tmp_path / "nan", Checkpoint(epoch=1, model_state=state, model_config=model.model_config)
    )
    argv = ["evaluate", str(path), "--data", "npz", "--data-dir", str(reference.data)]
    code = main([*argv, "--out", str(tmp_path / "eval"), *EVAL_ARGS])
    line = _one_line_error(capsys, code)  # a RobustodeError: one line, exit 2
    assert "non-finite logits on the clean images" in line, line
    assert not (tmp_path / "eval" / "report.json").exists()
