"""``robustode reproduce sonet-t2 --scale cpu``: its rows and settings, the runs spread over
worker processes (``--jobs``), resuming, one reproduce per folder, and the printed table."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robustode.cli import main
from robustode.errors import InputError, RobustodeError
from robustode.experiments import reproduce as rp
from robustode.experiments.paper_tables import PAPER_TABLES
from robustode.experiments.parallel import threads_per_job
from robustode.models import create_model
from robustode.outputs import FolderInUseError

pytestmark = pytest.mark.usefixtures("one_thread")

T2 = PAPER_TABLES["sonet-t2"]


def write_cifar10(folder: Path, n_train: int = 40, n_test: int = 16, seed: int = 0) -> Path:
    """A tiny CIFAR-10 folder in the official layout (pickled dicts of uint8 rows, protocol 2),
    written without robustode; labels cycle through the ten classes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_train // 5
        batch = {
            "batch_label": name,
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": [i % 10 for i in range(n)],
            "filenames": [f"{name}_{i}.png" for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": [f"class{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


# ------------------------------------------------------------------ rows and settings
def test_cpu_scale_rows_are_soblock_solvers_with_the_adaptive_ones_under_both_semantics():
    rows = rp.rows_at(T2, rp.CPU)
    labels = [r.label for r in rows]
    assert labels == [
        "SOBlock Euler",
        "SOBlock RK4 (3/8 rule)",
        "SOBlock Dopri5 (tol 0.1)",
        "SOBlock Dopri5 (tol 0.1), torchdiffeq-2019 steps",
        "SOBlock Bosh3 (tol 0.1)",
        "SOBlock Bosh3 (tol 0.1), torchdiffeq-2019 steps",
        "SOBlock Adaptive Heun (tol 0.1)",
        "SOBlock Adaptive Heun (tol 0.1), torchdiffeq-2019 steps",
    ]
    paper = {r.label: r for r in T2.rows}
    for row in rows:
        options = row.train["model_options"]
        twin = row.label.endswith("torchdiffeq-2019 steps")
        assert options.get("step_semantics") == ("torchdiffeq-2019" if twin else None)
        # a twin is its row under the 2019 semantics, with the paper's numbers of that row
        base = paper[row.label.removesuffix(", torchdiffeq-2019 steps")]
        assert row.paper == base.paper
        assert {k: v for k, v in options.items() if k != "step_semantics"} == dict(
            base.train["model_options"]
        )
    # no ODENet row, no row at another tolerance
    assert not any("ODENet" in label or "0.01" in label for label in labels)
    assert len({rp.run_name(r, 1, (0, 1, 2)) for r in rows}) == len(rows)  # distinct folders


def test_cpu_scale_names_the_engines_2019_semantics():
    from robustode.ode.semantics2019 import LEGACY_SEMANTICS, STEP_SEMANTICS

    assert rp.CPU.step_semantics == (LEGACY_SEMANTICS,) and LEGACY_SEMANTICS in STEP_SEMANTICS


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_step_semantics_leave_a_fixed_step_solve_unchanged(method):
    """Why the fixed-step rows run once: the 2019 semantics change adaptive step control
    only, so a fixed-step SOBlock computes the same outputs and input gradients."""
    x = torch.rand(3, 3, 8, 8, requires_grad=True)
    grads, outs = [], []
    for semantics in ("torchdiffeq-0.2.5", "torchdiffeq-2019"):
        model = create_model("soblock", seed=0, width=4, method=method, step_semantics=semantics)
        model.eval()
        out = model(x)
        (grad,) = torch.autograd.grad(out.logsumexp(1).sum(), x)
        outs.append(out.detach())
        grads.append(grad)
    assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])


def test_cpu_scale_trains_soblock_width_16_until_plateau_on_the_given_cifar10():
    for row in rp.rows_at(T2, rp.CPU):
        config = rp.train_config(T2, row, rp.CPU, data_dir="/data/cifar", seed=2)
        assert config.model == "soblock" and config.model_options["width"] == 16
        assert (config.data, config.data_dir) == ("cifar10", "/data/cifar")
        assert (config.epochs, config.plateau_patience) == (40, 5)
        assert config.eval_subset is None  # the plateau is judged on every test image
        # the paper's recipe (sonet preset) without its lr steps
        assert (config.batch_size, config.lr, config.momentum) == (100, 0.01, 0.9)
        assert config.milestones == () and config.augment is True and config.seed == 2
        assert config.model_options["method"] == row.train["model_options"]["method"]
    assert rp.CPU.n_eval == 200 and rp.CPU.audit == "quick"


def test_cpu_scale_columns_keep_the_papers_pgd20_and_add_autoattack_and_substitution():
    from robustode.evaluate.suites import parse_spec

    columns = {c.key: c for c in rp.columns_at(T2, rp.CPU)}
    assert list(columns) == ["clean", "pgd20_linf", "autoattack", "adaptive_pgd20_linf"]
    assert columns["pgd20_linf"] == T2.columns[1]  # the paper's column, unchanged
    pgd = parse_spec(rp.scaled_attack(columns["pgd20_linf"].attack, rp.CPU)).create()
    assert (pgd.threat.eps, pgd.step_size, pgd.steps, pgd.random_start) == (0.031, 0.003, 20, False)
    aa = rp.scaled_attack(columns["autoattack"].attack, rp.CPU)
    assert aa == "autoattack:eps=0.031,steps=20,queries=500"
    sub = parse_spec(rp.scaled_attack(columns["adaptive_pgd20_linf"].attack, rp.CPU)).create()
    assert (sub.attack.threat.eps, sub.attack.step_size, sub.attack.steps) == (0.031, 0.003, 20)
    assert (sub.substitute, sub.steps) == ("fixed", 16)
    notes = " ".join(rp.scale_notes(T2, rp.CPU))
    assert "soblock (width 16) in place of wrn34_10_soblock" in notes
    assert "ODENet Euler" in notes and "PGD1000" in notes  # left out, and said so
    assert "steps 20, queries 500" in notes


def test_cpu_scale_without_data_dir_or_for_another_table_is_one_line(capsys):
    for argv, words in (
        (["reproduce", "sonet-t2", "--scale", "cpu"], "pass --data-dir"),
        (["reproduce", "sonet-t1", "--scale", "cpu", "--data-dir", "x"], "sonet-t2 only"),
        (["reproduce", "sonet-t2", "--scale", "cpu", "--data-dir", "x", "--jobs", "0"], "jobs"),
    ):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's own refusals (--jobs 0)
            code = exit_.code
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    with pytest.raises(InputError, match="jobs must be an integer"):
        rp.reproduce("sonet-t2", scale="smoke", jobs=0)


def test_threads_per_job_share_the_cores():
    assert [threads_per_job(n, cores=16) for n in (1, 2, 3, 16, 32)] == [16, 8, 5, 1, 1]


# ------------------------------------------------------------------ the pipeline, shrunk
def tiny_cpu_scale(rows=("SOBlock Euler", "SOBlock Dopri5 (tol 0.1)")) -> rp.Scale:
    """The cpu scale with its model, epochs, evaluation and audit shrunk to seconds."""
    return dataclasses.replace(
        rp.CPU,
        train={**rp.CPU.train, "epochs": 2, "plateau_patience": 1, "batch_size": 20,
               "augment": False},
        model_options={"soblock": {"width": 2}},
        n_eval=6,
        autoattack={"steps": 2, "queries": 4},
        rows={"sonet-t2": rows},
        audit_n=4,
    )  # fmt: skip


def _work(folder: Path) -> dict[Path, int]:
    """The files that hold a run's work — its training, each attacked batch, its audit — by
    modification time (a rerun rewrites the report built from them, not these)."""
    names = ("metrics.jsonl", "config.json", "summary.json", "audit.json")
    return {
        p: p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and (p.name in names or {"checkpoints", "points"} & set(p.parts))
    }


def _read(out: Path) -> dict:
    return json.loads((out / "sonet-t2" / "reproduce.json").read_text())


@pytest.mark.slow  # 41 s at load average 5.5 on 2 cores: mostly starting two interpreters, twice
def test_jobs_2_runs_every_row_and_seed_in_worker_processes(tmp_path, monkeypatch, capfd):
    """The audit is left out here (it costs seconds per run even this small); the next test
    runs it."""
    data = write_cifar10(tmp_path / "cifar")
    scale = dataclasses.replace(tiny_cpu_scale(("SOBlock Dopri5 (tol 0.1)",)), audit=None)
    monkeypatch.setitem(rp.SCALE_BY_NAME, "cpu", scale)
    argv = ["reproduce", "sonet-t2", "--scale", "cpu", "--data-dir", str(data),
            "--out", str(tmp_path / "out"), "--seeds", "0,1", "--jobs", "2"]  # fmt: skip
    started = time.perf_counter()
    assert main(argv) == 0
    first = time.perf_counter() - started
    captured = capfd.readouterr()  # the workers write to file descriptor 2
    saved = _read(tmp_path / "out")
    assert saved["scale"] == "cpu" and saved["jobs"] == 2
    assert [r["label"] for r in saved["rows"]] == [
        "SOBlock Dopri5 (tol 0.1)",
        "SOBlock Dopri5 (tol 0.1), torchdiffeq-2019 steps",
    ]
    for row in saved["rows"]:
        assert set(row["per_seed"]) == {"0", "1"}
        for cells in row["per_seed"].values():
            assert set(cells) == {"clean", "pgd20_linf", "autoattack", "adaptive_pgd20_linf"}
            for key in ("pgd20_linf", "autoattack", "adaptive_pgd20_linf"):
                assert 0.0 <= cells[key] <= cells["clean"] + 1e-9
        # the mean and std are those of the two seeds' cells
        clean = [row["per_seed"][s]["clean"] for s in ("0", "1")]
        assert row["ours"]["clean"] == pytest.approx(statistics.mean(clean))
        assert row["std"]["clean"] == pytest.approx(statistics.stdev(clean))
        assert "verdicts" not in row["extra"]
        for seed, run in zip(("0", "1"), row["run_dir"].split(", "), strict=True):
            # each run is its own run folder, trained with its own seed, evaluated there
            config = json.loads((Path(run) / "config.json").read_text())
            assert config["seed"] == int(seed) and config["model_options"]["width"] == 2
            report = json.loads((Path(run) / "reproduce-eval" / "report.json").read_text())
            assert report["clean_accuracy"] == pytest.approx(row["per_seed"][seed]["clean"])
        assert all(1 <= e <= 2 for e in row["extra"]["epochs"].values())
    # the runs went to two worker processes (the log says so) and the table was printed
    assert "4 runs in 2 worker processes" in captured.err
    assert captured.err.count("done in") == 4
    # each worker's training lines name their run
    err = captured.err.splitlines()
    for label in ("[1/2] SOBlock Dopri5 (tol 0.1) (seed 1)",
                  "[2/2] SOBlock Dopri5 (tol 0.1), torchdiffeq-2019 steps (seed 0)"):  # fmt: skip
        assert any(line.startswith(f"{label}: epoch 1/2 |") for line in err), label
    assert "SOBlock Dopri5 (tol 0.1), torchdiffeq-2019 steps" in captured.out
    assert "wall time:" in captured.out and "in 2 processes" in captured.out

    # a second run reads everything back: nothing trained, evaluated or audited again
    stamps = _work(tmp_path / "out")
    assert sum(p.parent.parent.name == "points" for p in stamps) == 12  # 3 attacks × 4 runs
    started = time.perf_counter()
    assert main(argv) == 0
    assert time.perf_counter() - started < first
    assert _work(tmp_path / "out") == stamps
    again = _read(tmp_path / "out")["rows"]
    assert [r["per_seed"] for r in again] == [r["per_seed"] for r in saved["rows"]]


def test_every_run_is_audited_and_its_verdict_read_back_on_a_rerun(tmp_path, monkeypatch):
    data = write_cifar10(tmp_path / "cifar")
    monkeypatch.setitem(rp.SCALE_BY_NAME, "cpu", tiny_cpu_scale(("SOBlock Euler",)))
    kwargs = dict(scale="cpu", out_dir=tmp_path / "out", data_dir=str(data), seeds=(0, 1),
                  log=lambda s: None)  # fmt: skip
    result = rp.reproduce("sonet-t2", **kwargs)
    (row,) = result.rows
    assert set(row.extra["verdicts"]) == {"0", "1"}
    for seed, run in zip(("0", "1"), row.run_dir.split(", "), strict=True):
        audit = json.loads((Path(run) / "reproduce-audit" / "audit.json").read_text())
        # the verdict of the run's own audit, on the first audit_n test images at ε 0.031
        assert audit["verdict"] == row.extra["verdicts"][seed]
        assert audit["failed"] == row.extra["failed_checks"][seed]
        assert (audit["n"], audit["eps"], audit["level"]) == (4, 0.031, "quick")
    stamps = _work(tmp_path / "out")
    again = rp.reproduce("sonet-t2", **kwargs)
    assert _work(tmp_path / "out") == stamps  # no audit reran
    assert again.rows[0].extra["verdicts"] == row.extra["verdicts"]
    text = rp.format_table(again)
    assert ", ".join(row.extra["verdicts"].values()) in text


def test_an_interrupted_reproduce_continues_where_it_stopped(tmp_path, monkeypatch):
    data = write_cifar10(tmp_path / "cifar")
    scale = dataclasses.replace(tiny_cpu_scale(("SOBlock Euler", "SOBlock RK4 (3/8 rule)")),
                                audit=None)  # fmt: skip
    monkeypatch.setitem(rp.SCALE_BY_NAME, "cpu", scale)
    evaluate = rp._evaluate_row
    calls: list[str] = []

    def evaluate_then_die(table, row, run_dir, *args, **kwargs):
        calls.append(row.label)
        if row.label == "SOBlock RK4 (3/8 rule)" and len(calls) == 2:
            raise KeyboardInterrupt  # the reproduce is stopped while evaluating row 2
        return evaluate(table, row, run_dir, *args, **kwargs)

    monkeypatch.setattr(rp, "_evaluate_row", evaluate_then_die)
    out = tmp_path / "out"
    kwargs = dict(scale="cpu", out_dir=out, data_dir=str(data), log=lambda s: None)
    with pytest.raises(KeyboardInterrupt):
        rp.reproduce("sonet-t2", **kwargs)
    assert not (out / "sonet-t2" / "reproduce.json").exists()
    euler, rk4 = out / "sonet-t2" / "soblock-euler", out / "sonet-t2" / "soblock-rk4-3-8-rule"
    done, trained = _work(euler), _work(rk4)
    assert not (rk4 / "reproduce-eval").exists()
    result = rp.reproduce("sonet-t2", **kwargs)
    # row 1 is read back untouched; row 2's training is reused and only its evaluation runs
    assert _work(euler) == done
    assert {p: t for p, t in _work(rk4).items() if "points" not in p.parts} == trained
    assert calls == ["SOBlock Euler", "SOBlock RK4 (3/8 rule)", "SOBlock Euler",
                     "SOBlock RK4 (3/8 rule)"]  # fmt: skip
    assert [r.label for r in result.rows] == ["SOBlock Euler", "SOBlock RK4 (3/8 rule)"]
    assert (rk4 / "reproduce-eval" / "report.json").exists()


def test_a_second_reproduce_on_the_same_folder_is_refused_before_training(tmp_path, monkeypatch):
    """One reproduce per OUT/TABLE: its lock (OutputFolder's flock) is held by another
    process, so this one stops with one line and writes nothing."""
    data = write_cifar10(tmp_path / "cifar")
    monkeypatch.setitem(rp.SCALE_BY_NAME, "cpu", tiny_cpu_scale())
    folder = tmp_path / "out" / "sonet-t2"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom robustode.outputs import OutputFolder\n"
         f"OutputFolder({str(folder)!r}, 'reproduce').claim()\nprint('held', flush=True)\n"
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match=f"process {holder.pid}"):
            rp.reproduce("sonet-t2", scale="cpu", out_dir=tmp_path / "out", data_dir=str(data))
    finally:
        holder.kill()
        holder.wait()
    assert not any(p.name == "config.json" for p in folder.rglob("*"))


# ------------------------------------------------------------------ the printed table
def test_table_prints_mean_std_next_to_the_paper_with_epochs_and_verdicts():
    rows = rp.rows_at(T2, rp.CPU)[2:4]  # dopri5 today's and 2019's
    values = (
        ([0.60, 0.64, 0.62], [0.30, 0.34, 0.26], ["masked"] * 3, [12, 15, 40], [1, 1, 0]),
        ([0.61, 0.61, 0.58], [0.0, 0.01, 0.02], ["no masking detected"] * 2 + ["suspicious"],
         [9, 10, 11], [1, 1, 1]),
    )  # fmt: skip
    results = []
    for row, (clean, pgd, verdicts, epochs, plateau) in zip(rows, values, strict=True):
        per_seed = {
            str(s): {"clean": c, "pgd20_linf": p, "autoattack": 0.0, "adaptive_pgd20_linf": 0.0}
            for s, (c, p) in enumerate(zip(clean, pgd, strict=True))
        }
        mean, std = rp.aggregate_seeds(per_seed)
        extra = {
            "verdicts": {str(s): v for s, v in enumerate(verdicts)},
            "epochs": {str(s): e for s, e in enumerate(epochs)},
            "plateau": {str(s): bool(p) for s, p in enumerate(plateau)},
        }
        results.append(rp.RowResult(row.label, row.group, "", mean, dict(row.paper), 1.0, extra,
                                    per_seed, std, "cifar10", row.label))  # fmt: skip
    text = rp.format_table(rp.ReproduceResult(T2, rp.CPU, results, Path("x"), 7300.0, 2))
    lines = text.splitlines()
    assert lines[0].endswith("— cpu scale")  # CIFAR-10 is the paper's data: no swap noted
    first = next(line for line in lines if line.startswith("| SOBlock Dopri5 (tol 0.1) |"))
    cells = [c.strip() for c in first.strip("|").split("|")]
    # clean 62.0 ± 2.0 (94.22), PGD-20 30.0 ± 4.0 (71.20): statistics.stdev of the seeds
    assert cells[1] == "62.0 ± 2.0 (94.22)" and cells[2] == "30.0 ± 4.0 (71.20)"
    assert cells[3] == "0.0 ± 0.0" and cells[4] == "0.0 ± 0.0"  # not in the paper
    assert cells[5] == "12, 15, 40*"  # seed 2 hit the epoch limit before its plateau
    assert cells[6] == "masked, masked, masked"
    second = next(line for line in lines if "torchdiffeq-2019 steps |" in line)
    assert second.rstrip(" |").endswith("no masking detected, no masking detected, suspicious")
    assert "audit verdict" in lines[2] and "epochs" in lines[2]
    assert "- wall time: 2.03 h for 6 runs in 2 processes" in text
    assert "soblock (width 16)" in text


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's zombie may wait for a reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_end_when_the_reproduce_that_started_them_is_killed(tmp_path):
    """A SIGKILLed reproduce leaves no worker behind holding a run folder's lock. Each job
    runs a shell that writes its pid and sleeps: once both have written, both workers have
    run their initializer (which asks for the signal) and are inside their job."""
    import os
    import signal

    marks = [tmp_path / "a", tmp_path / "b"]
    jobs = [["sh", "-c", f"echo $$ > {m}.tmp && mv {m}.tmp {m} && exec sleep 60"] for m in marks]
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys\nfrom robustode.experiments.parallel import run_jobs\n"
         f"run_jobs(subprocess.call, {jobs!r}, 2)\n"],
    )  # fmt: skip
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while not all(m.exists() for m in marks) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(m.exists() for m in marks), "the two jobs did not start"
        children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
        workers = [
            int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()
        ]
        assert len(workers) == 2
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers)
    finally:
        parent.kill()
        for pid in [*workers, *(int(m.read_text()) for m in marks if m.exists())]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_a_workers_lines_carry_its_runs_label(capsys):
    from robustode.experiments.parallel import prefixed_stderr

    with prefixed_stderr("[2/8] SOBlock Euler: ") as original:
        print("epoch 1/40 | loss", file=sys.stderr, end="")
        print(" 2.3\nevaluating", file=sys.stderr)
        print("no newline yet", file=sys.stderr, end="")
        print("plain", file=original)
    assert capsys.readouterr().err.splitlines() == [
        "[2/8] SOBlock Euler: epoch 1/40 | loss 2.3",
        "[2/8] SOBlock Euler: evaluating",
        "plain",
        "[2/8] SOBlock Euler: no newline yet",
    ]


class TwoArgumentError(RobustodeError):
    """An error whose __init__ takes more than its message (module level: the class pickles,
    the instance does not unpickle)."""

    def __init__(self, message: str, extra: int) -> None:
        super().__init__(message)


def test_a_jobs_exception_reaches_the_parent_even_when_it_cannot_be_pickled():
    """TrainingStopped takes (message, run_dir, signum): pickled as it is, it fails to unpickle
    in the parent and breaks the pool (seen: a Ctrl-C hung reproduce --jobs 2). It comes back
    as a stop with its message; errors a user can fix stay such errors."""
    from robustode.experiments.parallel import JobError, JobInterrupted, _portable
    from robustode.train.loop import TrainingStopped

    stopped = _portable(TrainingStopped("stopped inside epoch 3", Path("/run"), 2))
    assert isinstance(stopped, JobInterrupted) and str(stopped) == "stopped inside epoch 3"
    error = _portable(TwoArgumentError("bad data", 1))
    assert isinstance(error, JobError) and str(error) == "bad data"
    assert isinstance(_portable(TwoArgumentError.__new__(TwoArgumentError)), JobError)
    plain = ValueError("x")
    assert _portable(plain) is plain  # what pickles comes back as it was
    for exc in (stopped, error):
        assert str(pickle.loads(pickle.dumps(exc))) == str(exc)


_INTERRUPTIBLE = """
import dataclasses, signal, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_reproduce_cpu import tiny_cpu_scale
from robustode.experiments import reproduce as rp
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job starts ignoring it
scale = tiny_cpu_scale(("SOBlock Dopri5 (tol 0.1)",))
train = {{**scale.train, "epochs": 5, "plateau_patience": 5}}
rp.SCALE_BY_NAME["cpu"] = dataclasses.replace(scale, train=train, audit=None)
rp.reproduce("sonet-t2", scale="cpu", data_dir={data!r}, out_dir={out!r}, jobs=2)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_every_run_with_a_checkpoint_and_a_rerun_continues(tmp_path):
    """SIGINT to a reproduce --jobs 2: each worker gets one SIGINT, its run stops at a step
    (or epoch) boundary with a checkpoint, everything exits; the same command again resumes
    both runs and finishes. (It once hung: the workers' TrainingStopped did not unpickle.)"""
    import os
    import signal

    data = write_cifar10(tmp_path / "cifar", n_train=200, n_test=20)
    out = tmp_path / "out"
    code = _INTERRUPTIBLE.format(tests=str(Path(__file__).parent), data=str(data), out=str(out))
    log = tmp_path / "log.txt"
    with log.open("w") as sink:
        first = subprocess.Popen([sys.executable, "-c", code], stderr=sink, stdout=sink)
    try:
        deadline = time.monotonic() + 120
        while log.read_text().count("epoch 1/5 |") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert log.read_text().count("epoch 1/5 |") == 2, log.read_text()
        children = Path(f"/proc/{first.pid}/task/{first.pid}/children").read_text().split()
        workers = [
            int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()
        ]
        os.kill(first.pid, signal.SIGINT)
        assert first.wait(timeout=60) != 0
        assert not any(_alive(w) for w in workers)
    finally:
        first.kill()
    assert "KeyboardInterrupt" in log.read_text()
    runs = sorted(p for p in (out / "sonet-t2").iterdir() if p.is_dir() and p.name != ".robustode")
    assert len(runs) == 2
    for run in runs:
        # stopped where it was, with a checkpoint past epoch 1 (inside an epoch or after it)
        assert any(p.name != "epoch-0001.json" for p in (run / "checkpoints").glob("epoch-*.json"))
    again = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("resuming") == 2
    for row in _read(out)["rows"]:  # each run went on to its end: 5 epochs or its plateau
        assert row["extra"]["epochs"]["0"] == 5 or row["extra"]["plateau"]["0"]
