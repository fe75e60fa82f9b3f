"""Where dfer looks for checkpoints, and the names it knows.

A checkpoint is one ``NAME.safetensors`` file (see checkpoint.py). ``--weights`` takes a
path or a name; a name is looked up, in order, in:

1. ``$DFER_WEIGHTS_DIR`` (if set),
2. the user cache, ``$XDG_CACHE_HOME/dfer/weights`` (default ``~/.cache/dfer/weights``),
3. the ``weights/`` folder bundled with a clone of dfer (next to ``dfer_cli/``).

Nothing here downloads anything: downloads happen only on ``dfer weights download NAME``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WEIGHTS = "logo_former_fer2013"
SUFFIX = ".safetensors"


@dataclass(frozen=True)
class KnownWeights:
    name: str
    description: str
    url: str | None = None       # only for checkpoints published for explicit download
    sha256: str | None = None


# Names dfer knows. Bundled ones live in weights/; an entry with a url may be fetched on
# request with `dfer weights download NAME`.
KNOWN: dict[str, KnownWeights] = {
    DEFAULT_WEIGHTS: KnownWeights(
        DEFAULT_WEIGHTS,
        "LOGO-Former (ResNet-18 trunk), trained on FER2013 stills with synthetic motion; bundled",
    ),
}


def bundled_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "weights"


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dfer" / "weights"


def search_dirs() -> list[Path]:
    """Folders searched for named checkpoints, in priority order."""
    dirs = []
    env = os.environ.get("DFER_WEIGHTS_DIR")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(user_cache_dir())
    dirs.append(bundled_dir())
    return dirs


def looks_like_path(spec: str) -> bool:
    return spec.endswith(SUFFIX) or os.sep in spec or "/" in spec or Path(spec).exists()


def find_weights(spec: str | os.PathLike | None = None) -> Path:
    """Resolve a name or a path to an existing checkpoint file.

    Raises FileNotFoundError with a one-line message saying how to get weights.
    """
    spec = str(spec) if spec is not None else DEFAULT_WEIGHTS
    if looks_like_path(spec):
        p = Path(spec).expanduser()
        if p.is_file():
            return p
        raise FileNotFoundError(f"{spec}: no such checkpoint file; pass an existing .safetensors path to --weights")
    for d in search_dirs():
        p = d / (spec + SUFFIX)
        if p.is_file():
            return p
    where = ", ".join(str(d) for d in search_dirs())
    hint = (f"run `dfer weights download {spec}`" if spec in KNOWN and KNOWN[spec].url
            else "train one with `dfer train`, or pass --weights PATH")
    raise FileNotFoundError(f"no checkpoint named {spec!r} in {where}: {hint}")


def list_weights() -> list[tuple[str, Path]]:
    """Every checkpoint found in the search folders as (name, path); earlier folders win."""
    seen: dict[str, Path] = {}
    for d in search_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*" + SUFFIX)):
                seen.setdefault(p.name[: -len(SUFFIX)], p)
    return sorted(seen.items())
