"""The documents say what the tool does: README's models table is what `dfer models --json`
prints, every `dfer` command line in README.md and docs/*.md names commands and options that
exist, and README's demo output is what the bundled default prints on the example."""
from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_models_table_is_what_dfer_models_prints():
    table = _script("models_table")
    want = table.markdown(table.models_report())
    assert want in (ROOT / "README.md").read_text(encoding="utf-8"), \
        "README's models table differs from `dfer models --json`; paste `python scripts/models_table.py`:\n" + want


def command_lines(text: str) -> list[str]:
    """The `dfer ...` invocations in the fenced sh blocks of a markdown text, continuation
    lines joined, each cut at the first pipe, redirection, `;`, `&&` or comment."""
    out = []
    for block in re.findall(r"```(?:sh|bash|console)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in re.split(r"\|\||&&|;|\|", line):
                part = part.strip()
                m = re.search(r"(?:^|\s)(?:dfer|-m dfer_cli)\s(.*)$", part) or re.fullmatch(r"dfer", part)
                if m is None or part.startswith("#"):
                    continue
                args = m.group(1) if m.groups() else ""
                args = re.split(r"\s[<>]|\s\d?>", " " + args)[0]
                out.append(args.strip())
    return out


def test_the_command_line_extraction_sees_a_known_command():
    lines = command_lines((ROOT / "README.md").read_text(encoding="utf-8"))
    assert any(line.startswith("predict examples/single_face_smile.mp4") for line in lines)
    assert any(line.startswith("eval ") for line in lines)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_documented_command_and_option_exists(doc):
    import typer.main

    from dfer_cli.cli.main import app

    cli = typer.main.get_command(app)
    bad = []
    for line in command_lines(doc.read_text(encoding="utf-8")):
        try:
            tokens = shlex.split(line)
        except ValueError:
            tokens = line.split()
        cmd, rest = cli, list(tokens)
        while rest and hasattr(cmd, "commands") and rest[0] in cmd.commands:
            cmd = cmd.commands[rest.pop(0)]
        if hasattr(cmd, "commands") and rest and not rest[0].startswith("-") and rest[0] != "...":
            bad.append(f"{line}: no command {rest[0]!r}")
            continue
        names = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        for tok in rest:
            if tok.startswith("-") and tok not in ("-", "--") and not re.fullmatch(r"-\d.*", tok):
                flag = tok.split("=", 1)[0]
                if flag not in names:
                    bad.append(f"dfer {line}: {flag} is not an option of {cmd.name}")
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="module")
def demo_records() -> list[dict]:
    """What README's demo command prints with the bundled default, as JSON Lines records. The
    documents show the float32 figures (a CPU with native bfloat16 runs the model in bf16 by
    default, probabilities within 0.002 of these on this example), so they hold on any CPU."""
    proc = subprocess.run([sys.executable, "-m", "dfer_cli", "predict", "examples/single_face_smile.mp4",
                           "--window", "1", "--stride", "0.5", "--threads", "1", "--precision", "fp32", "-f", "jsonl"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_predict_docs_example_records_are_what_the_bundled_default_prints(demo_records):
    text = (ROOT / "docs" / "predict.md").read_text(encoding="utf-8")
    shown = [json.loads(line) for line in re.search(r"five records\):\n\n```json\n(.*?)```", text,
                                                     flags=re.S).group(1).splitlines()]
    want = [demo_records[0], demo_records[-1]]
    for r in (*shown, *want):
        r.pop("dfer_version", None)
    assert shown == want


def test_readme_demo_output_is_what_the_bundled_default_prints(demo_records):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    demo = re.search(r"```\n(examples/single_face_smile\.mp4 *\n.*?)```", readme, flags=re.S).group(1)
    lines = [line.replace("│", " ") for line in demo.splitlines()]            # the table's rules
    rows = [line.split() for line in lines if re.match(r"\s*\d+\.\d\d–\d+\.\d\d\s", line)]
    clips = [r for r in demo_records if r["type"] == "clip"]
    assert len(rows) == len(clips)
    for row, clip in zip(rows, clips):
        assert row[0] == f"{clip['start']:.2f}–{clip['end']:.2f}" and row[1] == str(clip["track"])
        assert row[2] == clip["label"]
        got = [float(x) for x in row[3:]]
        want = [clip["probabilities"][c] for c in ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")]
        assert got == pytest.approx(want, abs=0.0015), (row, want)


def test_changelog_has_a_dated_section_for_this_version_in_keep_a_changelog_form():
    version = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), flags=re.M).group(1)
    from dfer_cli import __version__

    assert __version__ == version
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", text, flags=re.M)
    kinds = set(re.findall(r"^### (.+)$", text, flags=re.M))
    assert kinds and kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, kinds
    assert not re.search(r"session[s]? *\d|issue *#?\d", text, flags=re.I)


WRITES = {"-o", "--output", "--output-dir", "--annotate", "--plot", "--predictions", "--dir"}


def runnable(line: str) -> bool:
    """A documented command that runs offline here as written: every argument that is not an
    option is a command name, a number or an existing file of the repository, nothing is a
    placeholder (NAME, DIR, ...), and it writes no file."""
    try:
        tokens = shlex.split(line)
    except ValueError:
        return False
    if not tokens or any(t in WRITES or t.split("=")[0] in WRITES for t in tokens):
        return False
    if any(t == "..." or re.fullmatch(r"[A-Z][A-Z_0-9.]*", t) or t == "-" or "://" in t or "*" in t for t in tokens):
        return False
    commands = {"predict", "models", "env", "weights", "list"}
    for i, t in enumerate(tokens):
        if t.startswith("-"):
            continue
        prev = tokens[i - 1] if i else ""
        if prev.startswith("-") and "=" not in prev:
            continue      # an option's value
        if t not in commands and not (ROOT / t).exists():
            return False
    return tokens[0] in commands


RUNNABLE = sorted({line for doc in DOCS for line in command_lines(doc.read_text(encoding="utf-8")) if runnable(line)})


def test_some_documented_commands_are_runnable_here():
    assert any(line.startswith("predict examples/") for line in RUNNABLE) and "models" in RUNNABLE, RUNNABLE


@pytest.mark.parametrize("line", RUNNABLE)
def test_documented_command_runs_on_the_examples(line):
    proc = subprocess.run([sys.executable, "-m", "dfer_cli", *shlex.split(line)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"dfer {line}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
