"""``robustode bench``: the suite's output files and its one-line errors (no timings asserted)."""

from __future__ import annotations

import json

import torch

from robustode.cli import main


def test_bench_writes_tables_and_json_and_says_when_no_gpu_figure_was_taken(
    tmp_path, capsys, one_thread
):
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--only", "data", "--out", str(out)]) == 0
    md = (out / "bench.md").read_text()
    result = json.loads((out / "bench.json").read_text())
    assert "command: `robustode bench --quick --only data`" in md
    assert "| workers (peer) | images/s ours |" in md
    assert result["environment"]["torch"] == torch.__version__
    (section,) = result["sections"]
    (row,) = section["rows"]
    assert row["images"] == 5000 and row["speedup"] > 0
    # a quick run's ratio is noise: no verdict on it, in the table or the JSON
    assert row["met"] is None and section["verdict"] == "quick: not a measurement"
    assert "(quick: not a measurement) |" in md and "(met)" not in md and "(missed)" not in md
    if not torch.cuda.is_available():
        assert "no GPU figure was taken" in md


def test_bench_bad_section_is_one_line(capsys, tmp_path):
    assert main(["bench", "--only", "ode,gpuz", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "robustode: error: --only: unknown section 'gpuz'; choose from ode, memory, attacks, "
        "training, fields, data, gpu (comma-separated)"
    ]
    assert not any(tmp_path.iterdir())  # nothing written before the input was checked


def test_bench_without_cifar_batches_says_so_before_running_anything(capsys, tmp_path):
    out = tmp_path / "bench"
    argv = ["bench", "--only", "data,attacks", "--data-dir", str(tmp_path), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no data_batch_1 or test_batch" in err[0], err
    assert "pass --data-dir with a cifar-10-batches-py folder" in err[0]
    assert not out.exists()  # the data section, first in order, did not run either
