"""Where dfer looks for checkpoints, and the names it knows.

A checkpoint is one ``NAME.safetensors`` file (see checkpoint.py). ``--weights`` takes a
path or a name; a name is looked up, in order, in:

1. ``$DFER_WEIGHTS_DIR`` (if set),
2. the user cache, ``$XDG_CACHE_HOME/dfer/weights`` (default ``~/.cache/dfer/weights``),
3. the bundled ``weights/`` folder (in a clone next to ``dfer_cli/``; in an installed wheel
   the ``dfer_weights`` package).

Nothing here downloads anything: downloads happen only on ``dfer weights download NAME``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WEIGHTS = "logo_former_fer2013"
SUFFIX = ".safetensors"

# sha256 of the bundled weights/logo_former_fer2013.safetensors. Replacing that file means
# updating this line (and the hash in weights/README.md): tests/test_weights.py compares it
# with the file and fails until they agree.
BUNDLED_SHA256 = "2d7a0412419d0b5dc3bedebabca054ee08358cf8367ff2974db0878cc2fe63da"


@dataclass(frozen=True)
class KnownWeights:
    name: str
    description: str
    url: str | None = None       # only for checkpoints published for explicit download
    sha256: str | None = None


# Names dfer knows. Bundled ones live in weights/; an entry with a url may be fetched on
# request with `dfer weights download NAME`. An entry's sha256 is checked whenever a file
# standing for that name is loaded (see verify_registered).
KNOWN: dict[str, KnownWeights] = {
    DEFAULT_WEIGHTS: KnownWeights(
        DEFAULT_WEIGHTS,
        "a LOGO-Former (96 px) and a width-32 ResNet-18 CNN (48 px) averaged, trained on FER2013 stills; bundled",
        sha256=BUNDLED_SHA256,
    ),
}


def bundled_dir() -> Path:
    """The bundled checkpoints: the ``dfer_weights`` package (``weights/`` of the source
    tree, installed inside the wheel), else ``weights/`` next to ``dfer_cli/`` in a clone."""
    try:
        import dfer_weights
    except ImportError:
        return Path(__file__).resolve().parent.parent / "weights"
    return Path(dfer_weights.__file__).resolve().parent


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

    Raises FileNotFoundError with a one-line message saying how to get weights, and its
    subclass WeightsMismatchError when the file stands for a registered name but its sha256
    is not the registered one (see verify_registered).
    """
    spec = str(spec) if spec is not None else DEFAULT_WEIGHTS
    if looks_like_path(spec):
        try:
            p = Path(spec).expanduser()
        except RuntimeError:  # ~user that does not exist
            p = Path(spec)
        if p.is_file():
            return verify_registered(_readable(p))
        raise FileNotFoundError(f"{spec}: no such checkpoint file; pass an existing .safetensors path to --weights")
    for d in search_dirs():
        p = d / (spec + SUFFIX)
        if p.is_file():
            return verify_registered(_readable(p))
    where = ", ".join(str(d) for d in search_dirs())
    hint = ((f"run `dfer weights download {spec}`, " if spec in KNOWN and KNOWN[spec].url else "")
            + "train one with `dfer train`, or pass --weights PATH to a .safetensors checkpoint "
            "(`dfer weights list` shows what is installed)")
    raise FileNotFoundError(f"no checkpoint named {spec!r} in {where}: {hint}")


class WeightsUnreadableError(FileNotFoundError):
    """A checkpoint file is there but cannot be read (permissions). A FileNotFoundError, like
    WeightsMismatchError, so that every caller looking for usable weights reports it."""


def _readable(path: Path) -> Path:
    """``path``, or WeightsUnreadableError with a one-line message naming it and the fix."""
    if not os.access(path, os.R_OK):
        raise WeightsUnreadableError(f"{path}: permission denied; make the checkpoint readable (chmod +r) or pass another "
                              "with --weights")
    return path


def list_weights() -> list[tuple[str, Path]]:
    """Every checkpoint found in the search folders as (name, path); earlier folders win."""
    seen: dict[str, Path] = {}
    for d in search_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*" + SUFFIX)):
                seen.setdefault(p.name[: -len(SUFFIX)], p)
    return sorted(seen.items())


class WeightsMismatchError(FileNotFoundError):
    """A file standing for a registered name whose sha256 is not the one in the registry
    (damaged, or replaced by other bytes). A FileNotFoundError, so that every caller that
    handles "no usable checkpoint" handles it; the message is one line naming the file, the
    expected and actual hashes and the fix."""


# (resolved path, size, mtime in ns) -> sha256, for cached_sha256.
_DIGESTS: dict[tuple[str, int, int], str] = {}


def cached_sha256(path: str | os.PathLike) -> str:
    """file_sha256, computed once per process for a given file: the digest is kept under the
    file's resolved path, size and mtime, so a later call for the same unchanged file costs a
    stat (the CLI resolves a name, then loads the path; both check the same file)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        digest = _DIGESTS[key] = file_sha256(path)
    return digest


def registered_name(path: str | os.PathLike) -> str | None:
    """The registry name `path` stands for, or None: a file ``NAME.safetensors`` in one of
    the search folders (``$DFER_WEIGHTS_DIR``, the user cache, the bundled folder) whose
    NAME is in KNOWN with a sha256. A file elsewhere (a run folder, ``--weights PATH``) is
    the user's own and is not checked against the registry, whatever its name."""
    p = Path(path)
    if not p.name.endswith(SUFFIX):
        return None
    name = p.name[: -len(SUFFIX)]
    entry = KNOWN.get(name)
    if entry is None or not entry.sha256:
        return None
    parent = p.parent.resolve()  # the folder, not the file: a symlinked file still counts
    if not any(parent == d.resolve() for d in search_dirs()):
        return None
    return name


def verify_registered(path: Path) -> Path:
    """Return `path` after checking, when it stands for a registered name (see
    registered_name), that its sha256 is the registry's; raise WeightsMismatchError if not.

    The digest is computed once per process for a given file (see cached_sha256): 12 ms of
    CPU for the 10 MB bundled checkpoint here, and a stat for every later lookup."""
    name = registered_name(path)
    if name is None:
        return path
    expected = KNOWN[name].sha256.lower()
    actual = cached_sha256(path)
    if actual != expected:
        if path.parent.resolve() == bundled_dir().resolve():
            fix = "the bundled weights are damaged or were replaced: reinstall dfer (or restore the file from git)"
        elif KNOWN[name].url:
            fix = f"delete it and run `dfer weights download {name}`"
        else:
            fix = "delete it so that the bundled copy is used"
        raise WeightsMismatchError(f"{path}: sha256 {actual} is not the {expected} registered for {name!r}; {fix}")
    return path


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_source(path: Path) -> str:
    """Which search folder a found checkpoint came from: 'env', 'cache' or 'bundled'."""
    parent = path.resolve().parent
    env = os.environ.get("DFER_WEIGHTS_DIR")
    if env and parent == Path(env).expanduser().resolve():
        return "env"
    if parent == user_cache_dir().resolve():
        return "cache"
    if parent == bundled_dir().resolve():
        return "bundled"
    return "path"
