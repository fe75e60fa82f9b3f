"""benchmarks/run.py's parts that decide what is compared: settings, flags passed to
predict_video, and how two runs' records are paired and compared."""
import importlib.util
import sys
from pathlib import Path

import pytest

import dfer_cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_run", None)


def test_settings_name_a_revision_and_flags(bench):
    s = bench.parse_spec("old=@HEAD~2 --threads 1", 0)
    assert (s.label, s.rev, s.flags) == ("old", "HEAD~2", ["--threads", "1"])
    s = bench.parse_spec("fp32 model=--precision fp32", 0)
    assert (s.label, s.rev, s.flags) == ("fp32 model", None, ["--precision", "fp32"])
    assert bench.parse_spec("", 0).label == "defaults"
    s = bench.parse_spec("--min-face=40", 0)
    assert (s.label, s.flags) == ("--min-face=40", ["--min-face=40"])


def test_cli_flags_become_predict_video_arguments(bench):
    kw, other = bench.flags_to_kwargs(["--detector", "full", "--min-face=40", "--all-faces", "--batch-size", "4",
                                       "--precision", "fp32", "-w", "x.safetensors", "--threads", "1"],
                                      dfer_cli.predict_video)
    assert kw == {"detection": "full", "min_face": 40.0, "all_faces": True, "batch_size": 4, "precision": "fp32"}
    assert other == {"weights": "x.safetensors", "threads": "1"}
    with pytest.raises(ValueError, match="--no-such is not a predict_video parameter"):
        bench.flags_to_kwargs(["--no-such", "1"], dfer_cli.predict_video)


def test_records_are_paired_by_time_and_compared(bench):
    def clip(start, track, label, happy):
        return {"start": start, "end": start + 2, "track": track, "label": label,
                "probabilities": {"happy": happy, "neutral": 1 - happy}}

    ref = [clip(0, 0, "happy", 0.9), clip(1, 0, "neutral", 0.3), clip(2, 3, None, 0.5)]
    other = [clip(0, 0, "happy", 0.88), clip(1, 0, "happy", 0.6), clip(2, 2, None, 0.5)]  # track renumbered
    ag = bench.agreement(ref, other)
    assert (ag["paired"], ag["labels_equal"]) == (3, 2)
    assert ag["max_dp"] == pytest.approx(0.3)
