"""scripts/frame_readings.py: one reading per sampled face frame, per checkpoint."""
import re
import subprocess
import sys
from pathlib import Path

from synth import make_video

from dfer_cli.labels import CLASSES
from dfer_cli.weights import DEFAULT_WEIGHTS, bundled_dir

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "frame_readings.py"
SMILE = ROOT / "examples" / "single_face_smile.mp4"  # 72 frames, one face throughout
WEIGHTS = str(bundled_dir() / f"{DEFAULT_WEIGHTS}.safetensors")
CELL = re.compile(r"(\w{3}) (\d\.\d\d)")


def _run(*args):
    r = subprocess.run([sys.executable, str(SCRIPT), str(SMILE), *args], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_one_cell_per_sampled_frame_for_each_checkpoint():
    head, first, second = _run(WEIGHTS, WEIGHTS, "--every", "8")
    assert head.endswith("9 of 9 sampled frames show a face (every 8th frame, template zoom 1)")
    cells = CELL.findall(first.split(": ", 1)[1])
    assert len(cells) == 9 and first == second
    assert {c for c, _ in cells} <= {c[:3] for c in CLASSES}
    assert all(1 / len(CLASSES) <= float(p) <= 1 for _, p in cells)  # the top class of a softmax


def test_zoom_changes_the_crops_the_model_reads():
    plain = _run(WEIGHTS, "--every", "24")[1]
    zoomed = _run(WEIGHTS, "--every", "24", "--zoom", "0.7")[1]
    assert len(CELL.findall(zoomed)) == 3 and plain != zoomed


def test_a_video_without_faces_is_refused_in_one_line(tmp_path):
    blank = make_video(tmp_path / "blank.mp4", frames=12, fps=10, size=(96, 64))
    r = subprocess.run([sys.executable, str(SCRIPT), str(blank), WEIGHTS], capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines()[-1] == (f"{blank}: no face in the 3 sampled frames; "
                                                 "nothing to read (try a smaller --every)")
