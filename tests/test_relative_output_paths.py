"""A relative output folder (``--run-dir runs/r``, ``--out eval``) holds its own files.

Paths built on the folder (``folder.root / "checkpoints"``) were once taken for names relative
to the folder and joined to it a second time: ``train(config, "runs/r")`` wrote its
checkpoints to runs/r/runs/r/checkpoints, where neither ``load_model("runs/r")`` nor a resume
found them, and an evaluation into a relative folder did not recognise its own batch files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from robustode.evaluate import run_evaluation
from robustode.models import create_model
from robustode.outputs import OutputFolder
from robustode.train import TrainConfig, load_model, train


def test_folder_paths_and_folder_relative_names_land_in_the_same_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with OutputFolder("out/sub", "evaluate") as folder:
        folder.write_json(folder.root / "a.json", {})
        folder.write_json("b.json", {})
        assert folder.owns(folder.root / "a.json") and folder.owns("b.json")
    assert sorted(p.name for p in (tmp_path / "out" / "sub").glob("*.json")) == ["a.json", "b.json"]
    assert not (tmp_path / "out" / "sub" / "out").exists()


def test_training_into_a_relative_run_dir_keeps_checkpoints_inside_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    config = TrainConfig(
        model="resnet10", model_options={"width": 4}, epochs=1, max_steps_per_epoch=2
    )
    train(config, "runs/r", progress=False)
    assert (tmp_path / "runs" / "r" / "checkpoints" / "latest.json").is_file()
    assert not (tmp_path / "runs" / "r" / "runs").exists()
    assert load_model("runs/r").model_config["name"] == "resnet10"
    resumed = train(None, "runs/r", resume=True, progress=False).to_dict()
    assert resumed["start_epoch"] == 1  # resumed after epoch 1, not trained again from scratch
    assert resumed["checkpoint"].endswith("runs/r/checkpoints/epoch-0001.json")


def test_evaluating_into_a_relative_folder_reuses_its_own_batches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = create_model("resnet10", in_channels=1, width=4).eval()
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))

    def evaluate() -> dict:
        run_evaluation(model, x, y, ["fgsm"], "eval", eps_grid=None, curve_steps=2, plots=False)
        return {p: p.stat().st_mtime_ns for p in Path("eval/points").rglob("*.json")}

    first = evaluate()
    assert first and not Path("eval/eval").exists()
    assert evaluate() == first  # the batch files were read back, not recomputed and rewritten
