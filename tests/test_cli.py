"""The command line: results written, bad input named in one line, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from robustode.cli import main


def test_stability_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "stability.json"
    assert main(["stability", "--t0", "1", "5", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| t0 | skew" in printed and "| 5 |" in printed
    data = json.loads(out.read_text())
    assert [r["t0"] for r in data["rows"]] == [1.0, 5.0]
    assert data["settings"]["gamma"] == 0.1
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["stability", "--tol", "-1"], "expected a positive number, got '-1'"),
        (["stability", "--tol", "abc"], "expected a positive number, got 'abc'"),
        (["stability", "--gamma", "-0.5"], "expected a number ≥ 0"),
        (["stability", "--method", "rk45"], "invalid choice: 'rk45'"),
        (["stability", "--channels", "0"], "expected a positive integer"),
        (["stability", "--t0", "0"], "expected a positive number"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_get_one_clear_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robustode: error:") and message in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_unwritable_output_is_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["stability", "--t0", "1", "--out", str(blocker / "out")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("robustode: error:") and "Traceback" not in "\n".join(err)


def test_console_entry_point_runs_as_a_module():
    proc = subprocess.run(
        [sys.executable, "-m", "robustode", "stability", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0
    assert "Theorem" in proc.stdout or "skew" in proc.stdout


def test_models_lists_every_model_with_its_parameter_count(capsys, tmp_path):
    out = tmp_path / "models.json"
    assert main(["models", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| sonet | 5,944,022 | 10 | 9 |" in printed
    assert "| resnet10 | 4,903,242 | 0 | 5 |" in printed
    names = [row["name"] for row in json.loads(out.read_text())]
    assert names == sorted(names) and "wrn34_10_soblock" in names


def test_models_describes_one_model_built_with_options(capsys):
    assert main(["models", "soblock", "width=32", "method=rk4", "step_size=0.25"]) == 0
    printed = capsys.readouterr().out
    assert "parameters: 1,229,046" in printed
    assert "ODE block stem: SkewConvODE, rk4 (step 0.25)" in printed
    assert "perturbation points: stem, layer1.0, layer2.0, layer3.0, layer4.0" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["models", "resnet11"], "unknown model 'resnet11'; choose one of:"),
        (["models", "soblock", "widht=3"], "has no option(s) widht; it accepts:"),
        (["models", "soblock", "width"], "expected KEY=VALUE (e.g. eps=8/255), got 'width'"),
        (["models", "soblock", "width=abc"], "width must be an integer ≥ 1, got 'abc'"),
        (["models", "soblock", "name=x"], "has no option(s) name; it accepts:"),
        (["models", "soblock", "seed=x"], "seed must be an integer, got 'x'"),
    ],
)
def test_models_bad_input_gets_one_line(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors exit; ours return
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_attacks_lists_every_preset_with_its_budget(capsys):
    from robustode.attacks import list_attacks

    assert main(["attacks"]) == 0
    out = capsys.readouterr().out
    for name in list_attacks():
        assert f"| {name} |" in out
    assert "| pgd20-linf | L∞ ε=0.031 | 21 |" in out
    assert main(["attacks", "pgd20-l2", "steps=50"]) == 0
    assert "50 steps of 0.1" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["attacks", "pgd21"], "unknown attack 'pgd21'; choose one of: fgsm"),
        (["attacks", "fgsm", "steps=3"], "has no option 'steps'; it accepts: norm, eps"),
        (["attacks", "pgd20-linf", "eps=-1"], "eps must be a finite number > 0"),
    ],
)
def test_attacks_bad_input_gets_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_defenses_lists_each_defense_with_its_options(capsys):
    assert main(["defenses"]) == 0
    out = capsys.readouterr().out
    for name in ("natural", "pgd_at", "trades", "lad", "lad_sm", "noise"):
        assert f"{name}: " in out
    assert "beta=6.0" in out


def test_every_command_defaults_to_the_gpu_when_there_is_one():
    """--device auto everywhere (it was cpu for evaluate, audit, steps, demo and reproduce)."""
    import argparse

    from robustode.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    with_device = {}
    for name, command in sub.choices.items():
        for action in command._actions:
            if "--device" in action.option_strings:
                with_device[name] = action.default
    assert set(with_device) >= {"train", "evaluate", "audit", "steps", "demo", "reproduce"}
    from robustode.train import TrainConfig

    assert with_device.pop("train") == argparse.SUPPRESS  # train's defaults: TrainConfig's
    assert TrainConfig().device == "auto"
    assert set(with_device.values()) == {"auto"}, with_device


def test_the_command_line_is_a_package_without_argparse_in_the_library():
    """One module per command; argparse only in robustode/cli/; no sys.path edits."""
    from pathlib import Path

    import robustode

    root = Path(robustode.__file__).parent
    commands = {p.stem for p in (root / "cli").glob("*.py")} - {"__init__", "common"}
    assert commands == {
        "attacks", "audit", "bench", "defenses", "demo", "evaluate", "models", "reproduce",
        "stability", "steps", "train",
    }  # fmt: skip
    for path in root.rglob("*.py"):
        text = path.read_text()
        if "cli" not in path.relative_to(root).parts:
            assert "import argparse" not in text, path
        if path.name != "external.py":  # a user's model file may import its neighbours
            assert "sys.path.insert" not in text and "sys.path.append" not in text, path
