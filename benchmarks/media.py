"""The benchmark videos, built once from the credited clips and kept in a cache folder.

- `talking_head_61s_400x300.mp4`: examples/talking_head_webcam.mp4 (30.6 s, 400x300, 25 fps)
  played twice, about a minute of a frontal webcam talking head;
- `tears_of_steel_10s_1280x720.mp4`: ../shared/media/tears_of_steel_0500-0510.mp4 (10 s,
  640x360, 24 fps) upscaled to 1280x720 (bicubic): a 720p film clip with profile and 3/4
  faces and shot cuts. Skipped when the source clip is not on the machine.

Both are H.264 (libx264, crf 20, preset veryfast) written with PyAV.

    python benchmarks/media.py [--cache DIR]      # build them and print their paths
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_MEDIA = ROOT.parent / "shared" / "media"
TALKING_HEAD = ROOT / "examples" / "talking_head_webcam.mp4"
FILM = SHARED_MEDIA / "tears_of_steel_0500-0510.mp4"


def cache_dir() -> Path:
    d = Path(os.environ.get("DFER_BENCH_CACHE") or Path.home() / ".cache" / "dfer-bench")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _encode(dst: Path, frames, fps, size) -> Path:
    """Write RGB frames (H, W, 3) uint8 to `dst` as H.264 at `fps`; atomic (a .part file)."""
    import av

    tmp = dst.with_name(dst.name + ".part.mp4")
    with av.open(str(tmp), "w") as out:
        st = out.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = size[0], size[1], "yuv420p"
        st.options = {"crf": "20", "preset": "veryfast"}
        for rgb in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    tmp.replace(dst)
    return dst


def _decoded(src: Path):
    import av

    with av.open(str(src)) as c:
        for f in c.decode(video=0):
            yield f.to_ndarray(format="rgb24")


def talking_head_minute(cache: Path | None = None, loops: int = 2) -> Path:
    """examples/talking_head_webcam.mp4 played `loops` times (default about 61 s)."""
    dst = (cache or cache_dir()) / f"talking_head_{round(30.6 * loops)}s_400x300.mp4"
    if not dst.exists():
        frames = (rgb for _ in range(loops) for rgb in _decoded(TALKING_HEAD))
        _encode(dst, frames, 25, (400, 300))
    return dst


def film_720p(cache: Path | None = None) -> Path | None:
    """The 10 s Tears of Steel excerpt upscaled to 1280x720, or None without the source."""
    if not FILM.exists():
        return None
    dst = (cache or cache_dir()) / "tears_of_steel_10s_1280x720.mp4"
    if not dst.exists():
        import cv2

        frames = (cv2.resize(rgb, (1280, 720), interpolation=cv2.INTER_CUBIC) for rgb in _decoded(FILM))
        _encode(dst, frames, 24, (1280, 720))
    return dst


def benchmark_videos(cache: Path | None = None) -> list[Path]:
    """The issue's two whole-process benchmark videos (those that can be built here)."""
    return [p for p in (talking_head_minute(cache), film_720p(cache)) if p is not None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=None, help="folder for the videos (default $DFER_BENCH_CACHE "
                    "or ~/.cache/dfer-bench)")
    args = ap.parse_args()
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    for p in benchmark_videos(args.cache):
        print(p)


if __name__ == "__main__":
    main()
