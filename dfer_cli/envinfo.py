"""Facts about the installation, for `dfer env` and bug reports."""
from __future__ import annotations

from importlib import metadata


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def collect_env() -> dict:
    """Versions, the auto device, torch threads and the weights search folders."""
    import av
    import cv2
    import torch
    import torchvision

    from dfer_cli import __version__
    from dfer_cli.device import resolve_device
    from dfer_cli.weights import list_weights, search_dirs

    try:
        ffmpeg = ".".join(str(v) for v in av.library_versions["libavcodec"])
        ffmpeg = f"libavcodec {ffmpeg}"
    except Exception:  # pragma: no cover - depends on PyAV build
        ffmpeg = "unknown"
    versions = {
        "dfer": __version__,
        "python": __import__("platform").python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda available": str(torch.cuda.is_available()),
        "av (PyAV)": av.__version__,
        "FFmpeg": ffmpeg,
        "opencv": cv2.__version__,
        "facenet-pytorch": _dist_version("facenet-pytorch"),
        "numpy": __import__("numpy").__version__,
        "safetensors": _dist_version("safetensors"),
    }
    return {
        "versions": versions,
        "device": str(resolve_device("auto")),
        "threads": torch.get_num_threads(),
        "weights_dirs": [{"path": str(d), "exists": d.is_dir()} for d in search_dirs()],
        "weights": [{"name": n, "path": str(p)} for n, p in list_weights()],
    }
