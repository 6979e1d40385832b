"""The frictions a new user met (issue 18, item 5), each pinned by a test.

A small MLP trained for a few steps on the digits data (1×8×8) stands in for a model.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustode.attacks import AttackInputError, attack_preset, create_attack
from robustode.attacks.presets import ALIASES, attack_options, describe_preset, format_options
from robustode.data import float_images, load_dataset
from robustode.defenses import defense_entry
from robustode.errors import InputError
from robustode.evaluate.curves import DEFAULT_EPS_GRID, curve_options, eps_spec, plan_curves
from robustode.evaluate.plots import curve_figure, per_attack_figure, pyplot
from robustode.evaluate.report import group_threats
from robustode.evaluate.runner import run_evaluation
from robustode.evaluate.steps import run_step_studies, steps_markdown
from robustode.evaluate.suites import PAPER, parse_spec, resolve_attacks
from robustode.experiments.demo import ATTACKS, DemoResult, DemoRow, demo_figure
from robustode.experiments.paper_tables import PAPER_TABLES
from robustode.experiments.reproduce import (
    FULL,
    SMOKE,
    ReproduceResult,
    RowResult,
    data_used,
    format_table,
    row_label,
    rows_at,
)
from robustode.models import create_model
from robustode.options import (
    EPS_REL_TOL,
    format_eps,
    parse_option,
    parse_value,
    same_eps,
    suggest,
)
from robustode.options import format_options as render_options

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        data = load_dataset("digits", split="train").subset(256)
        x, y = data.float_images(), data.labels
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(40):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return model.eval()
    finally:
        torch.set_num_threads(threads)


def _images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("digits", split="test").subset(n)
    return data.float_images(), data.labels


# ------------------------------------------------- 1. one threat model for 0.031 and 8/255
def test_group_threats_joins_radii_within_two_percent():
    threats = [("linf", 0.031), ("linf", 8 / 255), ("l2", 0.5), ("linf", 0.0325), ("l2", 0.5)]
    # 8/255 = 0.03137 is 1.2 % above 0.031; 0.0325 is 4.6 % above 0.031: its own
    assert group_threats(threats) == [0, 0, 1, 2, 1]
    assert same_eps(0.031, 8 / 255) and not same_eps(0.031, 0.0325)
    assert EPS_REL_TOL == 0.02


def test_worst_case_of_the_paper_radii_includes_spsa(mlp, tmp_path):
    x, y = _images(16)
    specs = resolve_attacks(
        None, ["pgd20-linf:steps=3", "spsa:iterations=2,samples=4", "fgsm:eps=0.1"]
    )
    report = run_evaluation(mlp, x, y, specs, tmp_path, batch_size=8, plots=False).report
    rows = {w["attacks"][0]: w for w in report["worst_case"]}
    assert len(report["worst_case"]) == 2
    paper = rows["pgd20-linf:steps=3"]
    assert paper["attacks"] == ["pgd20-linf:steps=3", "spsa:iterations=2,samples=4"]
    assert paper["eps"] == 0.031 and paper["eps_values"] == [0.031, 8 / 255]
    result = run_evaluation(mlp, x, y, specs, tmp_path, batch_size=8, plots=False)
    robust = result.points[specs[0].id].robust & result.points[specs[1].id].robust
    assert paper["robust_points"] == int(robust.sum())
    assert "L∞ ε=0.031…8/255" in result.table()
    # the paper suite itself: SPSA shares pgd*-linf and cw-linf's threat model
    eps = [(create_attack(n).threat.norm, create_attack(n).threat.eps) for n in PAPER]
    groups = group_threats(eps)
    assert groups[PAPER.index("spsa")] == groups[PAPER.index("pgd20-linf")]


# ------------------------------------------------- 2. 8/255 everywhere, printed as 8/255
def test_fractions_are_accepted_in_every_option_value():
    assert parse_value("8/255") == pytest.approx(8 / 255)
    assert parse_value(" 0.5/255 ") == 0.5 / 255
    assert parse_value("3") == 3 and isinstance(parse_value("3"), int)
    assert parse_value("1e-3") == 0.001 and parse_value("true") is True
    assert parse_value("null") is None and parse_value("[1, 2]") == [1, 2]
    assert parse_value("dopri5") == "dopri5" and parse_value("x/255") == "x/255"
    assert parse_option("eps=8/255") == ("eps", 8 / 255)
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        parse_option("eps")
    with pytest.raises(InputError, match="denominator"):
        parse_value("1/0")
    spec = parse_spec("pgd20-linf:eps=8/255,step_size=2/255")
    assert spec.create().threat.eps == 8 / 255 and spec.create().step_size == 2 / 255
    # a defense option read from KEY=VALUE the same way reaches the defense as a number
    assert parse_option("eps=4/255")[1] == 4 / 255


def test_radii_print_as_multiples_of_one_255th():
    assert format_eps(8 / 255) == "8/255" and format_eps(0.5 / 255) == "0.5/255"
    assert format_eps(0.031) == "0.031" and format_eps(0.5, "l2") == "0.5"
    assert format_eps(8 / 255, "l2") == "0.03137"
    assert create_attack("pgd-linf").describe().startswith("pgd: L∞ ε=8/255, 10 steps of 2/255,")
    assert "eps=8/255" in format_options("spsa") and "step_size=2/255" in format_options("pgd-linf")
    assert format_options("pgd20-l2").startswith("norm='l2', eps=0.5, steps=20, step_size=0.1,")
    # the defenses' defaults, as `robustode defenses` should list them
    pgd_at = render_options(defense_entry("pgd_at").options)
    assert pgd_at.startswith("eps=8/255, step_size=2/255, steps=10,")


# ------------------------------------------------- 3. a comma string of specs
def test_resolve_attacks_takes_a_comma_string():
    assert [s.id for s in resolve_attacks(None, "pgd20-linf, spsa")] == ["pgd20-linf", "spsa"]
    specs = resolve_attacks(None, "pgd20-linf:eps=8/255,steps=5,fgsm")
    assert [s.id for s in specs] == ["pgd20-linf:eps=8/255,steps=5", "fgsm"]
    assert specs[0].options == {"eps": 8 / 255, "steps": 5}
    with pytest.raises(InputError, match=r"unknown attack 'pgd'; .*did you mean 'pgd-linf'"):
        resolve_attacks(None, "pgd20-linf,pgd")
    with pytest.raises(InputError, match="comma-separated string or a list"):
        resolve_attacks(None, [create_attack("fgsm")])


# ------------------------------------------------- 4. curves on request, readable ids
def test_curves_add_runs_only_on_request(mlp, tmp_path):
    x, y = _images(8)
    specs = resolve_attacks(None, "fgsm,spsa:iterations=1,samples=2")
    assert plan_curves(specs).extra_specs(specs) == []
    out = io.StringIO()
    report = run_evaluation(mlp, x, y, specs, tmp_path / "a", plots=False, stream=out).report
    assert [r["id"] for r in report["attacks"]] == [s.id for s in specs]
    assert report["curves"] == {"steps": None, "eps": None}
    assert not (tmp_path / "a" / "points" / "pgd20-linf").exists()
    assert "curves:" not in out.getvalue()
    # asked for: the extra runs are named up front, ε as k/255
    out = io.StringIO()
    grid = (1 / 255, 0.031)
    run_evaluation(mlp, x, y, specs, tmp_path / "b", plots=False, eps_grid=grid, stream=out)
    assert "curves: 2 extra run(s)" in out.getvalue()
    assert "pgd20-linf:eps=1/255,step_size=0.125/255" in out.getvalue()
    ids = [eps_spec(e).id for e in DEFAULT_EPS_GRID]
    assert "pgd20-linf:eps=0.5/255,step_size=0.0625/255" in ids
    assert not any("0.00196" in i for i in ids)
    for e in DEFAULT_EPS_GRID:  # the readable id gives the same attack
        attack = eps_spec(e).create()
        assert attack.threat.eps == e and attack.step_size == 2.5 * e / 20


def test_curve_options_map_a_request_to_run_evaluation_arguments():
    assert curve_options() == {"curve_steps": 0, "eps_grid": None}
    assert curve_options(True) == {"curve_steps": 100, "eps_grid": DEFAULT_EPS_GRID}
    assert curve_options(eps_grid=[2 / 255]) == {"curve_steps": 0, "eps_grid": (2 / 255,)}
    assert curve_options(True, curve_steps=0, eps_grid=[]) == {"curve_steps": 0, "eps_grid": ()}
    assert curve_options(curve_steps=50)["curve_steps"] == 50
    with pytest.raises(InputError, match="curve_steps must be an integer"):
        curve_options(curve_steps=-1)


# ------------------------------------------------- 5. uint8 images
def test_uint8_images_are_refused_with_the_conversion():
    x, y = _images(4)
    raw = (x * 255).round().to(torch.uint8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(AttackInputError, match=r"robustode\.data\.float_images\(x\)"):
        create_attack("fgsm")(model, raw, y)
    assert torch.allclose(float_images(raw), x, atol=0.5 / 255)
    assert float_images(x) is x
    with pytest.raises(InputError, match=r"uint8 .* or floating-point"):
        float_images(raw.long())


# ------------------------------------------------- 7. did you mean, defaults, aliases
def test_near_miss_names_get_a_suggestion_and_the_choices():
    with pytest.raises(
        InputError, match=r"'resnet-10'; choose one of: .*; did you mean 'resnet10'\?$"
    ):
        create_model("resnet-10")
    with pytest.raises(
        InputError, match=r"'cifar-10'; choose one of: .*; did you mean 'cifar10'\?$"
    ):
        load_dataset("cifar-10")
    with pytest.raises(
        InputError, match=r"'pgd'; choose one of: fgsm.*; did you mean 'pgd-linf'\?$"
    ):
        create_attack("pgd")
    with pytest.raises(InputError, match=r"did you mean 'lad'"):
        defense_entry("lda")
    # an iteration count the presets lack is an option (difflib offered pgd20-l2 for pgd30),
    # and the suggested spec runs that many steps in the named norm
    for name, spec in (("pgd30", "pgd20-linf:steps=30"), ("pgd50-l2", "pgd20-l2:steps=50"),
                       ("ifgsm7", "ifgsm20:steps=7")):  # fmt: skip
        with pytest.raises(InputError, match=rf"'{name}'; .*option: {spec}$"):
            create_attack(name)
        name_steps = int("".join(ch for ch in name.split("-")[0] if ch.isdigit()))
        assert parse_spec(spec).create().steps == name_steps
    assert parse_spec("pgd20-l2:steps=50").create().threat.norm == "l2"
    assert suggest("zzzz", ["fgsm", "spsa"]) == ""


def test_attack_options_come_with_their_defaults():
    options = attack_options("pgd-linf")
    assert list(options) == list(attack_preset("pgd-linf").options)
    assert options["eps"] == 8 / 255 and options["steps"] == 10 and options["random_start"]
    assert options["restarts"] == 1 and options["seed"] == 0  # from the class signature
    spsa = attack_options("spsa")
    attack = create_attack("spsa")
    assert (spsa["iterations"], spsa["samples"]) == (attack.iterations, attack.samples)
    adaptive = attack_options("adaptive-pgd20-linf")
    assert adaptive["substitute"] == "fixed" and adaptive["eps"] == 0.031


def test_peer_option_names_are_aliases():
    assert create_attack("square", n_queries=7).queries == 7
    pgd = create_attack("pgd-linf", alpha=1 / 255, n_restarts=3)
    assert pgd.step_size == 1 / 255 and pgd.restarts == 3
    assert create_attack("apgd-ce", n_iter=5).steps == 5
    assert create_attack("spsa", nb_iter=3).iterations == 3
    assert parse_spec("square:n_queries=9").create().queries == 9
    with pytest.raises(AttackInputError, match="alpha is another name for step_size"):
        create_attack("pgd-linf", alpha=0.1, step_size=0.2)
    with pytest.raises(AttackInputError, match="has no option 'alpha'"):
        create_attack("fab", alpha=0.1)  # FAB has no step size for alpha to stand for
    assert set(ALIASES) >= {"n_queries", "alpha", "n_restarts"}


# ------------------------------------------------- 6. the steps table
def _table_cells(line: str) -> int:
    """Cells of a Markdown table row: '|' separators that are not escaped, minus one."""
    return len(re.findall(r"(?<!\\)\|", line)) - 1


def test_steps_markdown_has_one_cell_per_header_and_the_run_iterations(tmp_path):
    torch.manual_seed(0)
    model = create_model("soblock", width=4, num_classes=10, in_channels=1).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 1, 8, 8, generator=g), torch.randint(0, 10, (3,), generator=g)
    studies = run_step_studies(model, x, y, tmp_path, iterations=(1, 3), attack="pgd1000-linf")
    text = (tmp_path / "steps.md").read_text()
    assert (tmp_path / "steps.json").is_file() and text == steps_markdown(studies)
    title = text.splitlines()[0]
    assert "PGD-3 " in title and "pgd1000-linf's settings" in title
    assert "PGD-1000" not in title and not title.startswith("# Adaptive step grids (SONet")
    rows = [line for line in text.splitlines() if line.startswith("|")]
    head = _table_cells(rows[0])
    assert head == 12  # 8 columns + the 4 per-image ones; |Δgrid| no longer splits a cell
    assert all(_table_cells(r) == head for r in rows if not r.startswith("|---"))
    assert rows[1].count("---") == head
    assert "\\|Δgrid\\|" in rows[0]


# ------------------------------------------------- 8. plots
def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _report(values: list[float]) -> dict:
    return {
        "n": 10,
        "clean_accuracy": 0.9,
        "attacks": [{"id": f"a{i}", "robust_accuracy": v} for i, v in enumerate(values)],
    }


def test_per_attack_bars_have_a_title_labels_and_a_visible_zero():
    fig = per_attack_figure(_report([0.0, 0.5, 0.9, 1.0]))
    ax = fig.axes[0]
    fig.canvas.draw()
    assert ax.get_title().startswith("Robust accuracy per attack")
    bars = ax.patches
    labels = [t.get_text() for t in ax.texts]
    assert len(bars) == 4 and labels == ["0 %", "50.0", "90.0", "100.0"]
    assert bars[0].get_height() > 0  # the 0 % bar is seen (a stub), not an empty slot
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    assert not any(_overlaps(legend, b.get_window_extent(renderer)) for b in bars)
    # the label of a 100 % bar fits inside the axes
    top = ax.get_window_extent(renderer).y1
    assert all(t.get_window_extent(renderer).y1 <= top for t in ax.texts)
    pyplot().close(fig)


def test_demo_legend_hides_no_bar():
    rows = [
        DemoRow(name, "", clean, {k: r for (k, _, _), r in zip(ATTACKS, robust, strict=False)},
                verdict, [], 0, 0, 0, "")
        for name, clean, robust, verdict in [
            ("natural", 0.97, [0.0] * len(ATTACKS), "no masking detected"),
            ("lad", 0.95, [0.9] * len(ATTACKS), "masked"),
            ("sonet", 0.96, [1.0] * len(ATTACKS), "suspicious"),
        ]
    ]  # fmt: skip
    fig = demo_figure(DemoResult(rows, Path("."), 0.0, []))
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    bars = ax.patches
    assert len(bars) == 3 * (len(ATTACKS) + 1) and len(ax.texts) == len(bars)
    assert not any(_overlaps(legend, b.get_window_extent(renderer)) for b in bars)
    pyplot().close(fig)


def test_curves_do_not_clip_their_last_point():
    points = [{"steps": k, "robust_accuracy": 0.5} for k in (1, 2, 5, 10, 20)]
    fig = curve_figure(
        points, [1, 2, 5, 10, 20], 90.0, xlabel="PGD iterations", xscale={"base": 10}, title="t"
    )
    low, high = fig.axes[0].get_xlim()
    assert low < 1 and high > 20
    pyplot().close(fig)


# ------------------------------------------------- 9. smoke rows name the data they ran on
def test_smoke_rows_are_labelled_by_the_data_they_were_trained_on():
    table = PAPER_TABLES["lad-t1"]
    rows = rows_at(table, SMOKE)
    assert rows and all(r.group == "CIFAR-10" for r in rows)
    results = [
        RowResult(r.label, r.group, "", {}, dict(r.paper), 0.0, {},
                  data=data_used(r, SMOKE), shown=row_label(r, SMOKE))
        for r in rows
    ]  # fmt: skip
    text = format_table(ReproduceResult(table, SMOKE, results, Path("."), 0.0))
    body = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(body) == len(rows)
    assert all(line.startswith("| digits (8×8) ") for line in body)
    assert all("(paper: CIFAR-10)" in line for line in body)
    assert "trained and evaluated on digits (8×8), not the paper's data" in text.splitlines()[0]
    # at full scale the paper's label stands
    assert row_label(rows[0], FULL) == rows[0].label == "CIFAR-10 " + rows[0].label[9:]
    sonet = PAPER_TABLES["sonet-t2"].rows[0]
    assert row_label(sonet, SMOKE) == f"{sonet.label} (digits (8×8))"


# ------------------------------------------------- 10. bench --quick
def test_quick_bench_prints_each_table_once_without_a_verdict(tmp_path, monkeypatch):
    from benchmarks import suite
    from benchmarks.section import Section

    def fake(quick: bool) -> Section:
        print("| pair | ratio | target |")  # a section printing rows as it measures them
        print("| a/b | 0.9 | ≤ 1 (met) |")
        rows = [{"pair": "a/b", "ratio": 0.9, "met": True}]
        table = "| pair | ratio | target |\n|---|---:|---|\n| a/b | 0.9 | ≤ 1 (met) |"
        return Section("fake", "Fake", "python -m fake", table, {"rows": rows})

    monkeypatch.setattr(suite, "_section_function", lambda name, data_dir=None: fake)
    out, err = io.StringIO(), io.StringIO()
    log = lambda text: print(text, file=out)  # noqa: E731
    sections = suite.run_suite(["fake"], True, tmp_path, "cmd", log=log, progress=err)
    printed = out.getvalue()
    assert printed.count("| a/b | 0.9 |") == 1 and printed.count("| pair | ratio |") == 1
    assert "(quick: not a measurement)" in printed and "(met)" not in printed
    assert "[bench] fake · | a/b | 0.9 | ≤ 1 (met) |" in err.getvalue()  # progress, marked
    assert sections[0].data["rows"][0]["met"] is None
    assert "(met)" not in (tmp_path / "bench.md").read_text()
    # the full run keeps its verdicts
    full = suite.run_suite(["fake"], False, tmp_path / "full", "cmd", log=log, progress=err)
    assert full[0].data["rows"][0]["met"] is True and "(met)" in full[0].table
    assert suite.quick_table("| x | ≤ 2 (MISSED) |\nmethod met") == (
        "| x | ≤ 2 (quick: not a measurement) |\nmethod met"
    )


def test_describe_preset_is_what_robustode_attacks_name_prints():
    text = describe_preset("pgd-linf", eps="4/255")
    lines = text.splitlines()
    assert lines[0].startswith("pgd: L∞ ε=4/255, 10 steps of 2/255")
    assert lines[1] == "model calls per image at most: 11"
    assert lines[2].startswith("options (defaults): norm='linf', eps=8/255, steps=10,")
    assert "alpha→step_size" in lines[3] and "n_restarts→restarts" in lines[3]
    assert "n_queries→queries" in describe_preset("square")
    # numbers given as text are numbers, in every numeric option
    assert create_attack("pgd-linf", eps="8/255", steps="5").steps == 5
    assert create_attack("autoattack", eps="4/255").threat.eps == 4 / 255
    assert parse_value('"8"') == "8"  # JSON's quoted string stays text


# ------------------------------------------------- long work is not silent in a log
def test_a_heartbeat_prints_progress_and_an_eta_while_work_runs():
    import io
    import time

    from robustode.heartbeat import Heartbeat

    stream = io.StringIO()
    with Heartbeat("evaluate", total=4, interval=0.05, stream=stream) as beat:
        beat.update(1, "pgd20 batch 1")
        time.sleep(0.3)
    lines = stream.getvalue().splitlines()
    assert lines, "no heartbeat line in 0.3 s at a 0.05 s interval"
    assert lines[-1].startswith("[evaluate] 1/4 done (pgd20 batch 1), ")
    assert "elapsed, about" in lines[-1] and lines[-1].endswith("left")
    quiet = io.StringIO()
    with Heartbeat("train", interval=0.05, enabled=False, stream=quiet):
        time.sleep(0.1)
    assert quiet.getvalue() == ""  # a terminal with a bar gets the bar instead


# ------------------------------------------------- data folders and the download hint
def test_a_relative_data_dir_is_stored_absolute_and_the_hint_names_a_real_flag(
    tmp_path, monkeypatch, capsys
):
    from robustode.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    argv = ["evaluate", "--model", "torch.nn:Flatten", "--data", "cifar10", "--data-dir"]
    code = main([*argv, "empty", "--device", "cpu", "--n", "2"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "--download" in line, line
    assert str(tmp_path / "empty") in line  # the folder as an absolute path
    # evaluate takes the flag its hint names
    from robustode.cli import build_parser

    args = build_parser().parse_args(["evaluate", "--model", "m:f", "--download"])
    assert args.download is True
