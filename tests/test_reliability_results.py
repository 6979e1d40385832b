"""Every number bound to what produced it: the findings of the hostile-user review, one test
each, on the mechanism that fixes them (fingerprints, owned and locked folders, explicit
checkpoints, checked inputs, bounded reads, stop signals, one error type).

Each test here failed on the code before this mechanism (the finding it is named after).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

from robustode.cli import main
from robustode.data import load_dataset
from robustode.errors import FolderError, InputError, RobustodeError
from robustode.evaluate import audit, load_target
from robustode.evaluate.report import strip_timings
from robustode.evaluate.runner import run_evaluation
from robustode.evaluate.suites import resolve_attacks
from robustode.io import read_bytes_limited, temporary_name
from robustode.models import ModelConfigError, create_model
from robustode.outputs import FolderInUseError, OutputFolder
from robustode.train import CheckpointError, TrainConfig, TrainingStopped, read_metrics, train
from robustode.train.checkpoint import FORMAT

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
QUICK = {"curve_steps": 0, "eps_grid": (), "plots": False, "progress": False}


def _config(**changes) -> TrainConfig:
    values = {
        "model": "soblock",
        "model_options": {"width": 4},
        "data": "digits",
        "epochs": 2,
        "batch_size": 32,
        "max_steps_per_epoch": 4,
        "eval_subset": 64,
        "device": "cpu",
        "lr": 0.05,
    }
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A SOBlock (dopri5, tol 0.1) trained two short epochs on digits, checkpoint per epoch."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("results") / "run"
        train(_config(keep_checkpoints=0), folder, progress=False)
        return folder
    finally:
        torch.set_num_threads(threads)


def _digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("digits", split="test").subset(n)
    return data.float_images(), data.labels


def _cli(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return int(code), captured.out, captured.err


def _one_line(err: str, *fragments: str) -> str:
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("robustode: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ============================================================ 1. stale numbers, changed model
def test_set_solver_then_the_same_folder_is_refused_and_overwrite_recomputes(run, tmp_path):
    target = load_target(run)
    x, y = target.test_images(12)
    specs = resolve_attacks(None, ["pgd20-linf"])
    out = tmp_path / "eval"
    dopri5 = run_evaluation(target.model, x, y, specs, out, batch_size=6, **QUICK)
    target.model.set_solver(method="euler", step_size=1.0)  # the README's own recipe
    # before: "nothing to run", and dopri5's numbers reported under Euler's name
    with pytest.raises(FolderError, match=r"solvers\.stem\.method: dopri5 → euler"):
        run_evaluation(target.model, x, y, specs, out, batch_size=6, **QUICK)
    euler = run_evaluation(target.model, x, y, specs, out, batch_size=6, overwrite=True, **QUICK)
    fresh = run_evaluation(target.model, x, y, specs, tmp_path / "fresh", batch_size=6, **QUICK)
    assert euler.report["model"]["solvers"]["stem"]["method"] == "euler"
    assert strip_timings(euler.report) == strip_timings(fresh.report)
    assert dopri5.report["fingerprint"] != euler.report["fingerprint"]


def test_an_edited_model_config_or_another_model_is_never_served_cached_numbers(
    run, tmp_path, capsys
):
    out = tmp_path / "eval"
    argv = ["evaluate", run, "--n", "8", "--attacks", "fgsm", "--curve-steps", "0", "--eps-grid",
            "", "--no-progress-bar", "--out", out]  # fmt: skip
    assert _cli(argv, capsys)[0] == 0
    # the checkpoint's model_config edited by hand: the model that runs is another one
    edited = tmp_path / "edited"
    edited.mkdir()
    for path in (run / "checkpoints").iterdir():
        if path.is_file():
            (edited / path.name).write_bytes(path.read_bytes())
    meta = json.loads((edited / "epoch-0002.json").read_text())
    meta["model_config"]["method"] = "rk4"
    meta["model_config"]["step_size"] = 0.5
    (edited / "epoch-0002.json").write_text(json.dumps(meta))
    code, _, err = _cli([*argv[:1], edited / "epoch-0002.json", *argv[2:]], capsys)
    assert code == 2
    _one_line(err, "other settings", "model_config.method", "--overwrite")
    # through the API, without meta, a different model altogether
    x, y = _digits(8)
    other = create_model("resnet10", width=4, in_channels=1, seed=1).eval()
    with pytest.raises(FolderError, match=r"model\.model_config\.name: soblock → resnet10"):
        run_evaluation(other, x, y, resolve_attacks(None, ["fgsm"]), out, **QUICK)


# ============================================================ 2. silent fallback
def test_a_damaged_newest_checkpoint_is_named_and_another_is_chosen_explicitly(
    run, tmp_path, capsys
):
    damaged = tmp_path / "run"
    damaged.mkdir()
    (damaged / "checkpoints").mkdir()
    for path in (run / "checkpoints").iterdir():
        if path.is_file():
            (damaged / "checkpoints" / path.name).write_bytes(path.read_bytes())
    (damaged / "metrics.jsonl").write_bytes((run / "metrics.jsonl").read_bytes())
    weights = damaged / "checkpoints" / "epoch-0002.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one flipped bit in a weight
    weights.write_bytes(bytes(data))
    for command in (["evaluate", "--attacks", "fgsm", "--curve-steps", "0", "--eps-grid", ""],
                    ["audit", "--level", "quick"]):  # fmt: skip
        code, _, err = _cli([command[0], damaged, *command[1:], "--n", "4"], capsys)
        assert code == 2, err
        _one_line(err, "epoch-0002.safetensors is damaged", "--checkpoint epoch-N", "epoch-1")
        assert not (damaged / command[0].replace("evaluate", "eval")).exists()
    argv = ["evaluate", damaged, "--checkpoint", "epoch-1", "--n", "4", "--attacks", "fgsm",
            "--curve-steps", "0", "--eps-grid", "", "--no-progress-bar"]  # fmt: skip
    assert _cli(argv, capsys)[0] == 0
    report = json.loads((damaged / "eval" / "report.json").read_text())
    assert report["checkpoint"]["epoch"] == 1
    assert report["checkpoint"]["file"].endswith("epoch-0001.json")
    assert report["weights_sha256"] == load_target(run, checkpoint="epoch-1").weights_sha256
    assert report["weights_sha256"] != load_target(run).weights_sha256


def test_best_picks_the_highest_recorded_test_accuracy(run):
    records = read_metrics(run)
    top = max(r["test_acc"] for r in records)
    best = max(r["epoch"] for r in records if r["test_acc"] == top)
    assert load_target(run, checkpoint="best").checkpoint["epoch"] == best
    with pytest.raises(CheckpointError, match="has no checkpoint epoch-7; it holds: epoch-1"):
        load_target(run, checkpoint="epoch-7")
    with pytest.raises(CheckpointError, match="latest, best or epoch-N"):
        load_target(run, checkpoint="newest")


# ============================================================ 3. a user's files
def test_a_users_points_folder_is_never_deleted_or_overwritten(tmp_path, capsys):
    x, y = _digits(6)
    model = create_model("resnet10", width=4, in_channels=1, seed=0).eval()
    out = tmp_path / "out"
    (out / "points" / "mine").mkdir(parents=True)
    (out / "points" / "mine" / "notes.txt").write_text("my own results")
    specs = resolve_attacks(None, ["fgsm"])
    run_evaluation(model, x, y, specs, out, **QUICK)
    run_evaluation(model, x, y, specs, out, overwrite=True, resume=False, **QUICK)
    assert (out / "points" / "mine" / "notes.txt").read_text() == "my own results"
    # a user's file where a batch file goes is refused, not replaced
    other = tmp_path / "other"
    (other / "points" / "fgsm").mkdir(parents=True)
    (other / "points" / "fgsm" / "batch-00000.json").write_text("mine")
    with pytest.raises(FolderError, match="was not written by robustode"):
        run_evaluation(model, x, y, specs, other, overwrite=True, **QUICK)
    assert (other / "points" / "fgsm" / "batch-00000.json").read_text() == "mine"


def test_download_into_a_partly_filled_folder_keeps_the_users_files(tmp_path, monkeypatch):
    from tests.test_data import make_tar_gz, serve_cifar10, write_cifar10_folder

    src = tmp_path / "src" / "cifar-10-batches-py"
    write_cifar10_folder(src)
    members = {f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in sorted(src.iterdir())}
    archive = tmp_path / "server" / "cifar-10-python.tar.gz"
    serve_cifar10(monkeypatch, archive, make_tar_gz(archive, members))
    root = tmp_path / "data"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "my-notes.txt").write_text("keep me")  # a user's file
    (folder / "data_batch_1").write_bytes((src / "data_batch_1").read_bytes())  # their copy
    ds = load_dataset("cifar10", split="train", root=root, download=True)
    assert len(ds) > 0
    assert (folder / "my-notes.txt").read_text() == "keep me"
    # a file of the user's (not robustode's) that differs from the archive's is named and
    # kept; robustode's own files are replaced
    (folder / "test_batch").unlink()
    (folder / "data_batch_1").write_bytes(b"user's own data")
    with pytest.raises(InputError, match=r"data_batch_1 differs from the file of .*not replaced"):
        load_dataset("cifar10", split="test", root=root, download=True)
    assert (folder / "data_batch_1").read_bytes() == b"user's own data"
    assert (folder / "my-notes.txt").read_text() == "keep me"


# ============================================================ 4. two processes, one folder
def test_a_second_process_in_a_held_folder_gets_one_line_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "robustode", "train", "--run-dir", str(run_dir), "--data",
            "digits", "--model-opt", "width=4", "--epochs", "1", "--max-steps-per-epoch", "1",
            "--eval-subset", "0", "--no-progress-bar"]  # fmt: skip
    eval_argv = [sys.executable, "-m", "robustode", "evaluate", str(run_dir), "--out",
                 str(tmp_path / "eval"), "--n", "2", "--attacks", "fgsm"]  # fmt: skip
    with OutputFolder(run_dir, "train"):
        done = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2
        _one_line(done.stderr, f"is in use by robustode process {os.getpid()}", "--run-dir DIR")
    with OutputFolder(tmp_path / "eval", "evaluate"):
        assert subprocess.run(argv, env=ENV, capture_output=True, timeout=300).returncode == 0
        done = subprocess.run(eval_argv, env=ENV, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2
        _one_line(done.stderr, f"in use by robustode process {os.getpid()}")
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1]
    # the lock goes with its process: nothing is left locked
    with OutputFolder(run_dir, "train"):
        pass
    # within one process a second claim is refused too (never a self-deadlock)
    with OutputFolder(tmp_path / "x", "audit"), pytest.raises(FolderInUseError):
        OutputFolder(tmp_path / "x", "audit").claim()


def test_two_concurrent_trainings_into_one_folder_never_interleave(tmp_path):
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "robustode", "train", "--run-dir", str(run_dir), "--data",
            "digits", "--model-opt", "width=4", "--epochs", "3", "--max-steps-per-epoch", "8",
            "--eval-subset", "0", "--no-progress-bar"]  # fmt: skip
    first = subprocess.Popen([*argv, "--lr", "0.01"], env=ENV, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen([*argv, "--lr", "0.1"], env=ENV, stderr=subprocess.PIPE, text=True)
    errs = [p.communicate(timeout=300)[1] for p in (first, second)]
    codes = sorted([first.returncode, second.returncode])
    # one trains; the other is refused: in use, or a different run (lr) once the first is done
    assert codes == [0, 2], errs
    loser = errs[[first.returncode, second.returncode].index(2)]
    assert "is in use by robustode process" in loser or "differs in lr" in loser, loser
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert len({r["lr"] for r in records}) == 1
    config = json.loads((run_dir / "config.json").read_text())
    assert config["lr"] == records[0]["lr"]


def test_temporary_names_are_unique_per_process_and_call(tmp_path):
    path = tmp_path / "report.json"
    names = {temporary_name(path).name for _ in range(100)}
    assert len(names) == 100 and all(f".{os.getpid()}." in n for n in names)


# ============================================================ 5. labels and shapes
def test_labels_the_model_cannot_output_are_refused(run, tmp_path, capsys):
    x, y = _digits(10)
    npz = tmp_path / "shifted.npz"
    images = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    np.savez(npz, x=images, y=(y + 10).numpy(), num_classes=20)
    for command in (["evaluate", "--attacks", "fgsm"], ["audit", "--level", "quick"]):
        code, _, err = _cli([command[0], run, "--data", "npz", "--data-dir", npz, "--n", "10",
                             *command[1:]], capsys)  # fmt: skip
        assert code == 2, err
        _one_line(err, "labels run from 10 to 19 but the model outputs 10 classes")
    with pytest.raises(ModelConfigError, match="num_classes must be at most 100,000"):
        create_model("resnet10", num_classes=10**12)


def test_images_of_another_shape_than_the_model_was_trained_on_are_refused(run, tmp_path, capsys):
    npz = tmp_path / "big.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, x=rng.integers(0, 256, (4, 16, 16, 1), dtype=np.uint8), y=np.arange(4))
    code, _, err = _cli(["evaluate", run, "--data", "npz", "--data-dir", npz, "--attacks", "fgsm"],
                        capsys)  # fmt: skip
    assert code == 2
    _one_line(err, "trained on images of shape (1, 8, 8)", "(1, 16, 16)")
    # --n beyond the split says what it used
    code, _, err = _cli(["evaluate", run, "--n", "5000", "--attacks", "fgsm", "--curve-steps",
                         "0", "--eps-grid", "", "--no-progress-bar", "--out", tmp_path / "e"],
                        capsys)  # fmt: skip
    assert code == 0 and "test split has 359 images; using all 359 (asked for 5000)" in err


# ============================================================ 6. cached batch files
def _batch_files(out: Path) -> list[Path]:
    return sorted((out / "points").rglob("batch-*.json"))


def _reseal(path: Path, change) -> None:
    """Change a batch file's content and recompute its checksum, as a forger would."""
    from robustode.evaluate.batches import seal

    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(seal(data)))


@pytest.mark.parametrize(
    "tamper",
    [
        "other-run", "flipped-bit", "success-2", "robust-not-clean", "json-list", "missing-key",
        "clean-disagrees",
    ],
)  # fmt: skip
def test_cached_batch_files_are_validated_and_bad_ones_recomputed(tmp_path, tamper, capsys):
    x, y = _digits(12)
    model = create_model("resnet10", width=4, in_channels=1, seed=0).eval()
    specs = resolve_attacks(None, ["fgsm", "pgd20-linf"])
    out = tmp_path / "out"
    reference = run_evaluation(model, x, y, specs, out, batch_size=6, **QUICK)
    target = out / "points" / "fgsm" / "batch-00001.json"
    if tamper == "other-run":  # the batch files of another model's evaluation copied in
        other = create_model("resnet10", width=4, in_channels=1, seed=1).eval()
        run_evaluation(other, x, y, specs, tmp_path / "o", batch_size=6, **QUICK)
        for path in _batch_files(tmp_path / "o"):
            (out / path.relative_to(tmp_path / "o")).write_bytes(path.read_bytes())
    elif tamper == "flipped-bit":
        data = bytearray(target.read_bytes())
        start = data.index(b'"success"') + len(b'"success"')
        at = next(i for i in range(start, len(data)) if data[i] in b"01")
        data[at] ^= 0x01  # '0' <-> '1': one flipped bit
        target.write_bytes(bytes(data))
    elif tamper == "success-2":
        _reseal(target, lambda d: d["success"].__setitem__(0, 2))
    elif tamper == "robust-not-clean":  # robust 100 % with clean 0 %
        _reseal(target, lambda d: d.update(success=[0] * 6, clean_correct=[0] * 6))
    elif tamper == "json-list":
        target.write_text("[1, 2, 3]")
    elif tamper == "missing-key":
        _reseal(target, lambda d: d.pop("queries"))
    else:  # a consistent-looking forgery whose clean verdicts contradict the other attack's
        _reseal(target, lambda d: d.update(clean_correct=[1 - c for c in d["clean_correct"]],
                                           success=[1] * 6))  # fmt: skip
    capsys.readouterr()
    again = run_evaluation(model, x, y, specs, out, batch_size=6, **QUICK)
    err = capsys.readouterr().err
    assert "recomputing it" in err and "Traceback" not in err, err
    assert strip_timings(again.report) == strip_timings(reference.report)
    assert all(
        json.loads(p.read_text())["format"] == "robustode-batch-2" for p in _batch_files(out)
    )


# ============================================================ 7. unbounded work
def _run_quick(argv, timeout=60) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "robustode", *map(str, argv)]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_a_small_file_naming_a_huge_model_is_refused_at_once(tmp_path):
    weights = tmp_path / "w.safetensors"
    config = {"name": "resnet10", "blocks_per_stage": 100000}
    weights.write_bytes(
        save_safetensors(
            {"x": torch.zeros(22000)},
            metadata={"format": FORMAT, "model_config": json.dumps(config)},
        )
    )
    assert weights.stat().st_size > 80_000
    started = time.perf_counter()
    done = _run_quick(["evaluate", weights, "--data", "digits", "--attacks", "fgsm"])
    assert time.perf_counter() - started < 30
    assert done.returncode == 2
    _one_line(done.stderr, "blocks_per_stage must be at most 1,000")
    # within the option bounds but over the parameter limit: refused before it is built
    config = {"name": "wrn34_10", "widen_factor": 1000}
    weights.write_bytes(
        save_safetensors({"x": torch.zeros(1)}, metadata={"format": FORMAT,
                                                          "model_config": json.dumps(config)})
    )  # fmt: skip
    done = _run_quick(["evaluate", weights, "--data", "digits", "--attacks", "fgsm"])
    assert done.returncode == 2
    _one_line(done.stderr, "parameters, more than the limit of 1,000,000,000")


def test_fifos_devices_and_huge_declared_arrays_are_refused_without_hanging(run, tmp_path):
    copy = tmp_path / "run"
    (copy / "checkpoints").mkdir(parents=True)
    for path in (run / "checkpoints").iterdir():
        if path.is_file() and path.name != "latest.json":
            (copy / "checkpoints" / path.name).write_bytes(path.read_bytes())
    os.mkfifo(copy / "checkpoints" / "latest.json")  # would block a plain open forever
    done = _run_quick(["evaluate", copy, "--attacks", "fgsm", "--n", "2"])
    assert done.returncode == 2
    _one_line(done.stderr, "latest.json is damaged")
    (copy / "checkpoints" / "latest.json").unlink()
    (copy / "checkpoints" / "epoch-0002.json").unlink()
    (copy / "checkpoints" / "epoch-0002.json").symlink_to("/dev/zero")
    done = _run_quick(["evaluate", copy / "checkpoints" / "epoch-0002.json", "--attacks", "fgsm"])
    assert done.returncode == 2
    _one_line(done.stderr, "is a device; robustode reads a checkpoint .json only from a regular")
    with pytest.raises(InputError, match="is a FIFO"):
        os.mkfifo(tmp_path / "fifo")
        read_bytes_limited(tmp_path / "fifo")
    # a few MB of zeros compressed to nothing that declare gigabytes
    npz = tmp_path / "bomb.npz"
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": (300_000, 3, 64, 64)}
    )
    import zipfile

    labels = io.BytesIO()
    np.save(labels, np.zeros(300_000, dtype=np.int64))
    with zipfile.ZipFile(npz, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", buffer.getvalue() + b"\x00" * 6_000_000)
        z.writestr("y.npy", labels.getvalue())
    assert npz.stat().st_size < 100_000
    with pytest.raises(InputError, match=r"declares arrays of 14,748,000,000 bytes"):
        load_dataset("npz", split="test", root=npz)


# ============================================================ signals
class _StopAt:
    """A defense that sends this process a signal at (epoch, step), then trains as 'natural'."""

    def __init__(self, signum: int, epoch: int, step: int) -> None:
        from robustode.defenses import create_defense

        self.inner = create_defense("natural")
        self.signum, self.at, self.calls = signum, (epoch, step), 0

    def __call__(self, model, x, y):
        self.calls += 1
        if self.calls == self.at[1] + (self.at[0] - 1) * 4:
            os.kill(os.getpid(), self.signum)
        return self.inner(model, x, y)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_signal_ends_training_at_a_step_boundary_and_resumes_bitwise(
    tmp_path, monkeypatch, signum
):
    import robustode.train.loop as loop

    config = _config(epochs=3, model="resnet10", eval_subset=0, keep_checkpoints=0)
    full = tmp_path / "full"
    train(config, full, progress=False)
    stopped = tmp_path / "stopped"
    with monkeypatch.context() as m:
        m.setattr(loop, "create_defense", lambda name, **o: _StopAt(signum, epoch=2, step=2))
        with pytest.raises(TrainingStopped, match=r"inside epoch 2 after step 2 of 4.*resume=True"):
            train(config, stopped, progress=False)
    assert (stopped / "checkpoints" / "epoch-0001-step-000002.json").is_file()
    assert [r["epoch"] for r in read_metrics(stopped)] == [1]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    summary = train(None, stopped, resume=True, progress=False)
    assert summary.start_epoch == 1 and summary.final["epoch"] == 3
    from safetensors.torch import load_file

    for name in ("epoch-0003.safetensors", "epoch-0003.state.safetensors"):
        ours = load_file(stopped / "checkpoints" / name)
        theirs = load_file(full / "checkpoints" / name)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    untimed = [[{k: v for k, v in r.items() if "seconds" not in k} for r in read_metrics(d)]
               for d in (stopped, full)]  # fmt: skip
    assert untimed[0] == untimed[1]
    assert not list((stopped / "checkpoints").glob("*step*"))  # the stopped state is done with


def test_sigterm_on_the_command_line_prints_how_to_continue(tmp_path):
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "robustode", "train", "--run-dir", str(run_dir), "--data",
            "digits", "--model-opt", "width=4", "--epochs", "50", "--eval-subset", "0",
            "--batch-size", "8", "--no-progress-bar"]  # fmt: skip
    process = subprocess.Popen(argv, env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (run_dir / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    err = process.communicate(timeout=240)[1]
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "training stopped by SIGTERM" in err and f"robustode train --resume {run_dir}" in err
    assert "Traceback" not in err
    pointer = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    assert "stopped" in pointer or pointer["epoch"] >= 1


def test_finished_train_and_evaluate_rerun_alike(run, tmp_path, capsys):
    config = json.loads((run / "config.json").read_text())
    argv = ["train", "--run-dir", run, "--model", config["model"], "--data", "digits",
            "--model-opt", "width=4", "--epochs", "2", "--batch-size", "32",
            "--max-steps-per-epoch", "4", "--eval-subset", "64", "--lr", "0.05",
            "--keep-checkpoints", "0", "--device", "cpu", "--no-progress-bar"]  # fmt: skip
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "lock"}
    code, out, err = _cli(argv, capsys)
    assert code == 0 and "nothing to train" in out, err
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "lock"}
    evaluate = ["evaluate", run, "--n", "4", "--attacks", "fgsm", "--curve-steps", "0",
                "--eps-grid", "", "--no-progress-bar", "--out", tmp_path / "e"]  # fmt: skip
    assert _cli(evaluate, capsys)[0] == 0
    code, _, err = _cli(evaluate, capsys)
    assert code == 0 and "nothing to run" in err


# ============================================================ the library enforces it too
def test_the_python_api_protects_folders_and_names_python_arguments(run, tmp_path):
    target = load_target(run)
    x, y = target.test_images(4)
    out = tmp_path / "audit"
    audit(target.model, x, y, level="quick", out_dir=out)
    with pytest.raises(FolderError, match=r"other settings \(settings\.eps.*overwrite=True"):
        audit(target.model, x, y, level="quick", eps=4 / 255, out_dir=out)
    with OutputFolder(tmp_path / "held", "audit"), pytest.raises(FolderInUseError):
        audit(target.model, x, y, level="quick", out_dir=tmp_path / "held")
    from robustode.experiments.stability import StabilitySettings, run_stability

    settings = StabilitySettings(t0s=(1.0,), batch=2, size=4, channels=2)
    run_stability(settings, out_dir=tmp_path / "s")
    with pytest.raises(FolderError, match="overwrite=True"):
        run_stability(StabilitySettings(t0s=(2.0,), batch=2, size=4, channels=2),
                      out_dir=tmp_path / "s")  # fmt: skip
    with pytest.raises(InputError, match=r"t0s must be integration times in \(0, 10000\]"):
        StabilitySettings(t0s=(1e308,))


# ============================================================ one error type
def test_only_robustode_errors_are_one_line_and_bugs_keep_their_traceback(capsys, monkeypatch):
    assert issubclass(CheckpointError, RobustodeError) and issubclass(FolderError, ValueError)
    code, _, err = _cli(["attacks", "pgd20-linf", "eps=-1"], capsys)
    assert code == 2
    _one_line(err, "eps must be a finite number > 0")
    import robustode.cli.defenses as defenses_command

    def broken(args):
        raise TypeError("an internal mistake")

    monkeypatch.setattr(defenses_command, "run", broken)  # the parser is built per call
    code, _, err = _cli(["defenses"], capsys)
    assert code == 1
    assert "Traceback" in err and "TypeError: an internal mistake" in err
    assert "this is a bug in robustode" in err
