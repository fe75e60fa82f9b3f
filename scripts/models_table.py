"""Print README's models table from `dfer models --json`, so that it cannot drift from the tool.

    python scripts/models_table.py            # paste the output over README's table

tests/test_docs_figures.py fails when README's table differs from what this prints.
"""
from __future__ import annotations

import json
import subprocess
import sys


def models_report() -> dict:
    out = subprocess.run([sys.executable, "-m", "dfer_cli", "models", "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def markdown(report: dict) -> str:
    """One row per registered model: parameters, GFLOPs per 16-frame clip, and the total
    (attention QK/AV) GFLOPs at 8, 16, 32 and 64 frames."""
    lines = ["| model | params (M) | GFLOPs / clip | T=8 | T=32 | T=64 |",
             "|---|---:|---:|---:|---:|---:|"]
    for m in report["models"]:
        by_t = {g["num_frames"]: g for g in m["growth"]}

        def cell(t):
            g = by_t[t]
            return f"{g['gflops']:.1f} ({g['mixing_gflops']:.2f})"

        lines.append(f"| `{m['model']}` | {m['params'] / 1e6:.2f} | {m['gflops']:.1f} | {cell(8)} | {cell(32)} | "
                     f"{cell(64)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(models_report()))
