"""The documentation stands on its own and its code runs.

1. No file a user gets (src/, docs/, README.md) points at files outside the repository: the
   papers are cited by title and arXiv id, and the facts robustode follows are in
   docs/references.md.
2. Every ```python block of README.md and docs/*.md runs as written — each in a fresh
   namespace, in a temporary working folder, seeded and single-threaded — and every
   ```bash block's ``robustode …`` commands run through the CLI, unless the block is preceded
   by ``<!-- not run: REASON -->`` (a reason is required). ```text blocks and blocks with no
   language are output samples and are not run.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# -------------------------------------------------------------------- no outside references
OUTSIDE = re.compile(r"REFERENCE\.md|DESIGN\.md|sonet\.txt|lad\.txt|\.\./shared|/work/shared")

EXCLUDED: set[Path] = set()  # nothing shipped may point outside the repository


def _shipped_text_files() -> list[Path]:
    files = [p for p in (ROOT / "src").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return [*files, *DOC_FILES]


def test_no_file_points_outside_the_repository():
    hits = []
    for path in _shipped_text_files():
        if path in EXCLUDED:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary data: not prose
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "cite the paper or docs/references.md instead:\n" + "\n".join(hits)


def test_the_outside_reference_check_can_fail():
    for line in ("see REFERENCE.md", "lad.txt eq. 5", "(sonet.txt §5)", "../shared/papers"):
        assert OUTSIDE.search(line)
    assert not OUTSIDE.search("docs/references.md, SONet §5 (arXiv:2009.13145)")


# -------------------------------------------------------------------------------- code blocks
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
MARKER = re.compile(r"^\s*<!--\s*not run:(?P<reason>.*?)-->\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    skip: str | None  # the marker's reason; None: run it

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def parse_blocks(path: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a Markdown file, and the problems with its not-run markers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, problems = [], []
    marker: tuple[int, str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        found = MARKER.match(line)
        if found:
            if marker is not None:
                problems.append(f"{path.name}:{marker[0]}: marker not followed by a block")
            marker = (i + 1, found["reason"].strip())
            i += 1
            continue
        fence = FENCE.match(line)
        if fence is None:
            if line.strip() and marker is not None:
                problems.append(f"{path.name}:{marker[0]}: marker not just before a block")
                marker = None
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not re.match(r"^[ \t]*```[ \t]*$", lines[end]):
            end += 1
        if end == len(lines):
            problems.append(f"{path.name}:{i + 1}: unclosed code block")
        code = textwrap.dedent("\n".join(lines[i + 1 : end]))
        skip = None
        if marker is not None:
            skip = marker[1]
            if not skip:
                problems.append(f"{path.name}:{marker[0]}: 'not run:' needs a reason")
            if fence["lang"] not in ("python", "bash"):
                problems.append(f"{path.name}:{marker[0]}: marker before a block never run")
            marker = None
        blocks.append(Block(path, i + 1, fence["lang"], code, skip))
        i = end + 1
    if marker is not None:
        problems.append(f"{path.name}:{marker[0]}: marker at the end of the file")
    return blocks, problems


def _all_blocks() -> tuple[list[Block], list[str]]:
    blocks, problems = [], []
    for path in DOC_FILES:
        b, p = parse_blocks(path)
        blocks += b
        problems += p
    return blocks, problems


BLOCKS, MARKER_PROBLEMS = _all_blocks()
PYTHON = [b for b in BLOCKS if b.lang == "python"]
BASH = [b for b in BLOCKS if b.lang == "bash"]


def _params(blocks: list[Block]) -> list:
    return [pytest.param(b, id=b.id) for b in blocks]


def test_blocks_are_run_or_say_why(capsys):
    assert not MARKER_PROBLEMS, "\n".join(MARKER_PROBLEMS)
    unknown = [b.id for b in BLOCKS if b.lang not in ("python", "bash", "text", "")]
    assert not unknown, f"blocks in a language this test neither runs nor skips: {unknown}"
    run = [b for b in PYTHON + BASH if b.skip is None]
    skipped = [b for b in PYTHON + BASH if b.skip is not None]
    assert len(PYTHON) >= 10 and run, "the parser lost the documentation's code blocks"
    with capsys.disabled():
        print(f"\ndocs code blocks: {len(run)} run, {len(skipped)} not run")
        for b in skipped:
            print(f"  {b.id} ({b.lang}): {b.skip}")


def test_the_marker_parser_reports_its_problems(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- not run: trains for minutes -->\n```bash\nrobustode train\n```\n"
        "<!-- not run: -->\n```python\npass\n```\n"
        "<!-- not run: output -->\n```text\nhello\n```\n"
        "<!-- not run: stray -->\nprose\n"
    )
    blocks, problems = parse_blocks(page)
    assert [(b.line, b.lang, b.skip) for b in blocks] == [
        (2, "bash", "trains for minutes"),
        (6, "python", ""),
        (10, "text", "output"),
    ]
    assert problems == [
        "page.md:5: 'not run:' needs a reason",
        "page.md:9: marker before a block never run",
        "page.md:13: marker not just before a block",
    ]


@contextlib.contextmanager
def _registries_restored():
    """A block may register a model, defense, attack or suite: the rest of the tests must not
    see it."""
    from robustode.attacks import presets
    from robustode.defenses import base as defenses
    from robustode.evaluate import suites
    from robustode.models import registry as models

    tables = [models._REGISTRY, defenses._REGISTRY, presets._PRESETS, suites.SUITES]
    saved = [dict(t) for t in tables]
    try:
        yield
    finally:
        for table, copy in zip(tables, saved, strict=True):
            table.clear()
            table.update(copy)


@pytest.fixture
def doc_sandbox(tmp_path, monkeypatch):
    """A fresh working folder, a fixed seed and one thread, as a reader's first try would be
    repeatable."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        with _registries_restored():
            yield tmp_path
    finally:
        torch.set_num_threads(threads)


def _run_python(block: Block) -> None:
    code = compile(block.code, block.id, "exec")
    exec(code, {"__name__": f"doc_block_{block.line}"})  # the docs' own code


@pytest.mark.parametrize("block", _params(PYTHON))
def test_python_block_runs(block: Block, doc_sandbox):
    if block.skip is not None:
        pytest.skip(f"{block.id} not run: {block.skip}")
    _run_python(block)


def test_an_incomplete_block_fails(doc_sandbox):
    """A fragment that leans on names from an earlier block (as the docs once did) fails, and
    blocks share no namespace."""
    first = Block(ROOT / "README.md", 1, "python", "model = 1", None)
    second = Block(ROOT / "README.md", 2, "python", "print(model)", None)
    _run_python(first)
    with pytest.raises(NameError):
        _run_python(second)


def _commands(code: str) -> list[list[str]]:
    """The block's commands, continuation lines joined and comments dropped."""
    joined = code.replace("\\\n", " ")
    return [args for line in joined.splitlines() if (args := shlex.split(line, comments=True))]


@pytest.mark.parametrize("block", _params(BASH))
def test_bash_block_runs(block: Block, doc_sandbox, capsys):
    if block.skip is not None:
        pytest.skip(f"{block.id} not run: {block.skip}")
    from robustode.cli import main

    commands = _commands(block.code)
    assert commands, f"{block.id}: an empty bash block"
    for args in commands:
        assert args[0] == "robustode", (
            f"{block.id}: only `robustode …` commands are run here; mark the block "
            f"'<!-- not run: REASON -->' if `{' '.join(args)}` is expensive"
        )
        try:
            code = main(args[1:])
        except SystemExit as stop:  # --help exits through argparse
            code = stop.code
        out = capsys.readouterr()
        assert code in (0, None), f"{' '.join(args)} exited {code}:\n{out.out}\n{out.err}"
        assert out.out.strip(), f"{' '.join(args)} printed nothing"


@pytest.mark.parametrize("block", _params([b for b in BASH if b.skip is not None]))
def test_bash_block_not_run_still_parses(block: Block, capsys):
    """A command too expensive to run still names a real command with real options."""
    from robustode.cli import build_parser

    for args in _commands(block.code):
        if "robustode" not in args:  # bash scripts/…, python -m benchmarks…
            continue
        rest = args[args.index("robustode") + 1 :]  # also after torchrun … -m robustode
        try:
            build_parser().parse_args(rest)
        except SystemExit as stop:
            err = capsys.readouterr().err
            pytest.fail(f"{block.id}: `{' '.join(args)}` does not parse (exit {stop.code}): {err}")
