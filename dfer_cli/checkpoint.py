"""dfer checkpoints: one ``.safetensors`` file that rebuilds a model on its own.

The tensors are the model's state dict (float32, or float16 with ``half=True``; loading
always gives float32). The safetensors header metadata holds one key, ``dfer``, whose value
is a JSON object::

    {"format": "dfer-checkpoint", "format_version": 1, "dfer_version": "0.2.0",
     "model": "logo_former", "config": {...every FormerConfig field...},
     "classes": ["happy", ...], "preprocessing": {...Preprocessing.to_dict()...},
     "provenance": {"dataset": ..., "fold": ..., "epochs": ..., "metrics": {...}},
     "sampling": "uniform" | "segments8x2",
     "dtype": "float32" | "float16"}

``sampling`` is the frame sampling the model was trained with (dfer_cli/video/sampling.py);
evaluation uses it, and a file without it (older dfer) means ``uniform``. A run's
checkpoints also say in ``provenance.checkpoint`` whether they are its ``best`` or ``last``,
and a ``best`` in ``provenance.selected_on`` which split it was selected on.

Reading never unpickles: safetensors parses a JSON header and raw tensor bytes only. A
header is untrusted input: :func:`read_metadata` checks every field's type and range, and
:func:`read_checkpoint` checks that the tensors' names and shapes are those the declared
config makes (built on the "meta" device, which allocates nothing) before reading any data.
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch

from dfer_cli import __version__
from dfer_cli.fsutil import atomic_path
from dfer_cli.models.ensemble import ENSEMBLE
from dfer_cli.preprocess import Preprocessing

FORMAT = "dfer-checkpoint"
FORMAT_VERSION = 1
META_KEY = "dfer"

# Bounds on a header's config: far beyond any real dfer model (the papers' is dim 512, depth 4,
# 8 heads, 16 frames of 112 px) and small enough that building the declared model on the
# "meta" device to compare tensor shapes stays quick. The real allocation is bounded by the
# file itself: its tensors must have the shapes the config makes.
CONFIG_INTS = {"num_frames": (1, 512), "input_size": (1, 2048), "num_classes": (1, 10_000),
               "dim": (1, 4096), "depth": (1, 64), "heads": (1, 256)}
CONFIG_FLOATS = {"mlp_ratio": (0.0, 64.0), "dropout": (0.0, 1.0), "attn_dropout": (0.0, 1.0),
                 "drop_path": (0.0, 1.0), "compact_lambda": (0.0, 1e6)}
MAX_WINDOW = 4096
MAX_CLIP_BYTES = 2 << 30  # the memory one clip may need in the trunk (clip_memory_bytes)
MAX_MEMBERS = 16      # models in an ensemble checkpoint (each is run on every frame)
MAX_NESTING = 64      # levels of JSON arrays/objects in a header (real ones use about 4)
_FIX = "the file is damaged or not from dfer; re-download it or re-save it with dfer"


class CheckpointError(ValueError):
    """A checkpoint cannot be read or used; the message is one line naming the file and the fix."""


def save_checkpoint(path, model, *, classes, preprocessing, provenance=None, half=False,
                    sampling: str | None = None) -> Path:
    """Write ``model`` (a registered model: has ``.model_name`` and ``.config``) to ``path``.

    ``classes`` are the output class names in logit order; ``preprocessing`` a
    ``Preprocessing`` (or its dict); ``provenance`` any JSON-able dict (dataset, fold,
    epochs, metrics...); ``sampling`` the frame sampling it was trained with (default: the
    model's ``.sampling`` when it was loaded from a checkpoint, else ``uniform``).
    ``half=True`` stores floating tensors as float16 (half the size).
    The write is atomic: a temporary file in the same folder is renamed over ``path``.
    """
    from safetensors.torch import save_file

    if getattr(model, "folded", False):
        raise ValueError("this model was folded for inference (its BatchNorm is merged into the convolutions) and "
                         "cannot be saved as a checkpoint; load the checkpoint again and save that")

    from dfer_cli.video.sampling import DEFAULT_SAMPLING, check_sampling

    sampling = sampling or getattr(model, "sampling", None) or DEFAULT_SAMPLING
    check_sampling(sampling)
    path = Path(path)
    classes = [str(c) for c in classes]
    if len(classes) != model.config.num_classes:
        raise ValueError(f"{len(classes)} class names for a model with {model.config.num_classes} outputs")
    pre = preprocessing.to_dict() if isinstance(preprocessing, Preprocessing) else dict(preprocessing)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "dfer_version": __version__,
        "model": model.model_name, "config": model.config.to_dict(), "classes": classes,
        "preprocessing": pre, "provenance": provenance or {}, "sampling": sampling,
        "dtype": "float16" if half else "float32",
    }
    calibration = getattr(model, "calibration", None)
    if calibration:  # a fitted temperature (calibration.py), kept through export
        meta["calibration"] = dict(calibration)
    # The trunk is already in the tensors; the path to its initial weights is not needed
    # (and may not exist) where the checkpoint is loaded.
    for c in _former_configs(meta):
        c["backbone_weights"] = None
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if v.is_floating_point():
            v = v.half() if half else v.float()
        tensors[k] = v.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
    return path


def read_metadata(path) -> dict:
    """The JSON metadata of a dfer checkpoint, without reading the tensors."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file; pass an existing .safetensors checkpoint") from None
    except Exception as e:  # noqa: BLE001 -- safetensors raises its own error types
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({_first_line(e)}); it may be truncated "
            "or in another format -- re-download or re-save it with dfer") from None
    if raw is None:
        raise CheckpointError(
            f"{path}: a safetensors file without dfer metadata (not a dfer checkpoint); "
            "use a checkpoint written by `dfer train`, or a ResNet-18 file via backbone_weights")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: dfer metadata is not valid JSON ({e}); re-save the checkpoint") from None
    except RecursionError:
        raise CheckpointError(f"{path}: dfer metadata is nested too deeply to be a dfer header; {_FIX}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: metadata is not a dfer checkpoint header; re-save it with dfer")
    if _nesting(meta) > MAX_NESTING:
        raise CheckpointError(f"{path}: dfer metadata is nested more than {MAX_NESTING} levels deep; {_FIX}")
    version = meta.get("format_version", 0)
    if not _is_int(version):
        raise CheckpointError(f"{path}: metadata 'format_version' is {_show(version)}, not an int; {_FIX}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer dfer (format {version}); "
                              "upgrade dfer to load it")
    for key in ("model", "config", "classes", "preprocessing"):
        if key not in meta:
            raise CheckpointError(f"{path}: dfer metadata lacks {key!r}; re-save the checkpoint")
    _validate(path, meta)
    return meta


def _validate(path: Path, meta: dict) -> None:
    """Check the types and ranges of a parsed header, and fill in config defaults (an older
    checkpoint without e.g. ``stem`` gets the default); CheckpointError on the first bad key."""
    from dfer_cli.calibration import T_MAX, T_MIN, check_record

    _validate_names(path, meta)
    config = meta["config"]
    if not isinstance(config, dict):
        raise _bad(path, "config", config, "an object of model sizes")
    if meta["model"] == ENSEMBLE:
        meta["config"] = {"members": _validate_members(path, config)}
        members = [m["config"] for m in meta["config"]["members"]]
        c = {"num_classes": members[0]["num_classes"], "num_frames": members[0]["num_frames"],
             "input_size": max(m["input_size"] for m in members)}
    else:
        c = meta["config"] = _validate_config(path, meta["model"], config, "config")
        members = [c]
    _check_clip_memory(path, members)
    _validate_classes(path, meta["classes"], c)
    _validate_preprocessing(path, meta["preprocessing"], c)
    if check_record(meta.get("calibration")) is not None:
        raise _bad(path, "calibration", meta["calibration"], f"null or an object with a temperature in [{T_MIN}, {T_MAX}]")


def _bad(path: Path, key: str, value, expected: str) -> CheckpointError:
    return CheckpointError(f"{path}: metadata {key!r} is {_show(value)}, expected {expected}; {_FIX}")


def _validate_names(path: Path, meta: dict) -> None:
    """The model name, the string fields and the frame sampling (defaulted to uniform)."""
    from dfer_cli.models import available_models
    from dfer_cli.video.sampling import DEFAULT_SAMPLING, SAMPLINGS

    name = meta["model"]
    if not isinstance(name, str):
        raise _bad(path, "model", name, "a model name")
    if name != ENSEMBLE and name not in available_models():
        raise CheckpointError(f"{path}: model {name!r} is unknown to this dfer "
                              f"({', '.join([*available_models(), ENSEMBLE])}); upgrade dfer")
    for key, kinds, expected in (("dfer_version", (str,), "a string"), ("dtype", (str,), "a string"),
                                 ("provenance", (dict, type(None)), "an object"), ("sampling", (str,), "a string")):
        if key in meta and not isinstance(meta[key], kinds):
            raise _bad(path, key, meta[key], expected)
    meta.setdefault("sampling", DEFAULT_SAMPLING)  # written before dfer recorded it: uniform
    if meta["sampling"] not in SAMPLINGS:
        raise CheckpointError(f"{path}: frame sampling {meta['sampling']!r} is unknown to this dfer "
                              f"({', '.join(SAMPLINGS)}); upgrade dfer")


def _validate_members(path: Path, config: dict) -> list[dict]:
    """An ensemble's members, each config checked and filled in; all must agree on the
    number of classes and the clip length."""
    from dfer_cli.models import available_models

    members = config.get("members")
    if set(config) != {"members"} or not (isinstance(members, list) and 2 <= len(members) <= MAX_MEMBERS):
        raise _bad(path, "config", config, f"an object with 'members', a list of 2 to {MAX_MEMBERS} models")
    filled = []
    for i, m in enumerate(members):
        if not (isinstance(m, dict) and set(m) == {"model", "config"} and isinstance(m["model"], str)):
            raise _bad(path, f"config.members[{i}]", m, "an object with 'model' and 'config'")
        if m["model"] not in available_models():
            raise CheckpointError(f"{path}: member {i} is a model {m['model']!r}, unknown to this dfer "
                                  f"({', '.join(available_models())}); upgrade dfer")
        filled.append({"model": m["model"],
                       "config": _validate_config(path, m["model"], m["config"], f"config.members[{i}]")})
    for i, m in enumerate(filled[1:], 1):
        for key in ("num_classes", "num_frames"):
            if m["config"][key] != filled[0]["config"][key]:
                raise _bad(path, f"config.members[{i}].config.{key}", m["config"][key],
                           f"member 0's ({filled[0]['config'][key]})")
    return filled


def _validate_classes(path: Path, classes, c: dict) -> None:
    if not (isinstance(classes, list) and all(isinstance(v, str) and v for v in classes)):
        raise _bad(path, "classes", classes, "a list of class names")
    if len(classes) != c["num_classes"]:
        raise CheckpointError(f"{path}: metadata 'classes' names {len(classes)} classes for a model with "
                              f"{c['num_classes']} outputs (config.num_classes); {_FIX}")
    if len(set(classes)) != len(classes):
        raise _bad(path, "classes", classes, "distinct names")


def _validate_preprocessing(path: Path, pre, c: dict) -> None:
    if not isinstance(pre, dict):
        raise _bad(path, "preprocessing", pre, "an object")
    if "input_size" in pre and not (_is_int(pre["input_size"]) and pre["input_size"] == c["input_size"]):
        raise _bad(path, "preprocessing.input_size", pre["input_size"], f"config.input_size ({c['input_size']})")
    if "num_frames" in pre and not (_is_int(pre["num_frames"]) and 1 <= pre["num_frames"] <= c["num_frames"]):
        raise _bad(path, "preprocessing.num_frames", pre["num_frames"],
                   f"an int from 1 to config.num_frames ({c['num_frames']})")
    if "grayscale" in pre and not isinstance(pre["grayscale"], bool):
        raise _bad(path, "preprocessing.grayscale", pre["grayscale"], "true or false")
    for key in ("mean", "std"):
        v = pre.get(key, [1.0, 1.0, 1.0])
        if not (isinstance(v, list) and len(v) == 3 and all(_is_number(x) for x in v)) \
                or (key == "std" and min(v) <= 0):
            raise _bad(path, f"preprocessing.{key}", v, "3 finite numbers" + (" above 0" if key == "std" else ""))
    t = pre.get("template", [[0.5, 0.5]] * 5)
    if not (isinstance(t, list) and len(t) == 5
            and all(isinstance(p, list) and len(p) == 2 and all(_is_number(x) for x in p) for p in t)):
        raise _bad(path, "preprocessing.template", t, "5 [x, y] points (eyes, nose, mouth corners)")
    d = pre.get("detail_size")
    if d is not None and not (_is_int(d) and 8 <= d <= c["input_size"]):
        raise _bad(path, "preprocessing.detail_size", d,
                   f"null or an int from 8 to config.input_size ({c['input_size']})")


def _validate_config(path: Path, name: str, config, where: str) -> dict:
    """The config of a registered model ``name`` with its defaults filled in, every field
    checked; CheckpointError naming ``where`` (its key in the header) on the first bad one."""
    from dfer_cli.models import get_config
    from dfer_cli.models.backbone import STEMS
    from dfer_cli.models.former import MODEL_BLOCKS

    def bad(key: str, value, expected: str):
        return CheckpointError(f"{path}: metadata '{where}.{key}' is {_show(value)}, expected {expected}; {_FIX}")

    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: metadata {where!r} is {_show(config)}, expected an object of model "
                              f"sizes; {_FIX}")
    defaults = get_config(name).to_dict()
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise CheckpointError(f"{path}: {where} field(s) {', '.join(map(repr, unknown))} are unknown to "
                              "this dfer; upgrade dfer")
    c = {**defaults, **config, "backbone_weights": None}  # the trunk is in the tensors
    for key, (lo, hi) in CONFIG_INTS.items():
        if not (_is_int(c[key]) and lo <= c[key] <= hi):
            raise bad(key, c[key], f"an int from {lo} to {hi}")
    for key, (lo, hi) in CONFIG_FLOATS.items():
        if not (_is_number(c[key]) and lo <= c[key] <= hi):
            raise bad(key, c[key], f"a number from {lo:g} to {hi:g}")
    if c["dim"] % c["heads"]:
        raise bad("heads", c["heads"], f"a divisor of {where}.dim ({c['dim']})")
    if int(c["dim"] * c["mlp_ratio"]) < 1:
        raise bad("mlp_ratio", c["mlp_ratio"], "a ratio giving an MLP at least 1 wide")
    if c["block"] not in MODEL_BLOCKS:
        raise bad("block", c["block"], f"one of {', '.join(MODEL_BLOCKS)}")
    if c["stem"] not in STEMS:
        raise bad("stem", c["stem"], f"one of {', '.join(STEMS)}")
    w = c["window"]
    if not (isinstance(w, list) and len(w) == 3 and all(_is_int(v) and 1 <= v <= MAX_WINDOW for v in w)):
        raise bad("window", w, f"3 ints from 1 to {MAX_WINDOW} (frames, rows, cols)")
    return c


def clip_memory_bytes(c: dict) -> int:
    """An estimate of the memory one clip needs on its way into the trunk, from a validated
    config ``c``: the float32 frames (T x 3 x S x S) and the first stage's maps, which are the
    largest (width channels at S/2, or at S with the stride-1 stem), three of them alive at a
    time (convolution, BatchNorm, ReLU). Real face models need a few hundred MB at most; a
    header asking for far more is refused before anything is built."""
    t, s = int(c["num_frames"]), int(c["input_size"])
    side = s if c.get("stem") == "s1" else -(-s // 2)
    width = int(c.get("trunk_width") or 64)
    return 4 * t * (3 * s * s + 3 * width * side * side)


def _check_clip_memory(path: Path, configs: list[dict]) -> None:
    need = sum(clip_memory_bytes(c) for c in configs)
    if need > MAX_CLIP_BYTES:
        c = configs[0]
        raise CheckpointError(
            f"{path}: its config asks for about {need / 2**30:.1f} GiB per clip (input_size {c['input_size']}, "
            f"num_frames {c['num_frames']}), more than the {MAX_CLIP_BYTES / 2**30:.0f} GiB any face model of "
            f"dfer needs; {_FIX}")


def _former_configs(meta: dict) -> list[dict]:
    """The Former configs in a header: its own, or each ensemble member's."""
    if meta["model"] == ENSEMBLE:
        return [m["config"] for m in meta["config"]["members"]]
    return [meta["config"]]


def build_model(meta: dict):
    """A model with fresh weights of the architecture a validated header declares: a
    registered Former, or an Ensemble of them. Build it under ``torch.device("meta")`` to
    allocate nothing."""
    from dfer_cli.models import create_model
    from dfer_cli.models.ensemble import Ensemble

    if meta["model"] == ENSEMBLE:
        return Ensemble([create_model(m["model"], **{**m["config"], "backbone_weights": None})
                         for m in meta["config"]["members"]])
    return create_model(meta["model"], **{**meta["config"], "backbone_weights": None})


def _sizes(meta: dict) -> str:
    """The sizes of a header's model, for error messages."""
    one = lambda c: ", ".join(f"{k}={c[k]}" for k in CONFIG_INTS)  # noqa: E731
    if meta["model"] == ENSEMBLE:
        return "; ".join(f"member {i}: {one(c)}" for i, c in enumerate(_former_configs(meta)))
    return one(meta["config"])


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, float) or _is_int(v)) and math.isfinite(v)


def _show(value) -> str:
    """A short rendering of a header value for an error message."""
    text = json.dumps(value) if _nesting(value) <= MAX_NESTING else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _nesting(value) -> int:
    """How many levels of lists/dicts ``value`` has (iteratively: no recursion limit)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, level = todo.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, level)
            todo.extend((x, level + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


_INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_",
                 "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_")


@contextlib.contextmanager
def _without_init():
    """Skip torch.nn.init's initialisers while a model is built whose every parameter and
    buffer is then loaded (strict) or that lives on the "meta" device: the random values
    would be overwritten or do not exist (on meta, torch runs random fills through
    torch._refs, whose first use imports torch._dynamo: seconds at every `dfer predict`).
    For the bundled checkpoint this takes about 0.3 s off every load on 2 CPU cores."""
    saved = {name: getattr(torch.nn.init, name) for name in _INITIALISERS}
    try:
        for name in _INITIALISERS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def check_tensors(path, meta: dict) -> None:
    """Check that the tensor names and shapes in the file at ``path`` are exactly those of
    the model ``meta`` (from :func:`read_metadata`) declares, reading the safetensors header
    only. The model is built on the "meta" device: no memory is allocated for its weights.
    Raises CheckpointError naming the first tensor that does not fit."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with torch.device("meta"), _without_init():
            model = build_model(meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its config does not build a {meta['model']} ({_first_line(e)}); "
                              "upgrade dfer") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    floating = {k for k, v in model.state_dict().items() if v.is_floating_point()}
    try:
        with safe_open(str(path), framework="pt") as f:
            found = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read the tensor index ({_first_line(e)}); {_FIX}") from None
    sizes = _sizes(meta)
    for k, shape in expected.items():
        if k not in found:
            continue
        if found[k][0] != shape:
            raise CheckpointError(f"{path}: tensor {k!r} has shape {found[k][0]}, but the header's config "
                                  f"({sizes}) makes {shape}; {_FIX}")
        if k in floating and found[k][1] not in ("F16", "BF16", "F32", "F64"):
            raise CheckpointError(f"{path}: tensor {k!r} is stored as {found[k][1]}, not floating point; {_FIX}")
    missing = [k for k in expected if k not in found]
    if missing:
        raise CheckpointError(f"{path}: tensor {missing[0]!r} of a {meta['model']} with {sizes} is missing "
                              f"({len(missing)} missing); {_FIX}")
    unexpected = [k for k in found if k not in expected]
    if unexpected:
        raise CheckpointError(f"{path}: tensor {unexpected[0]!r} is not part of a {meta['model']} with "
                              f"{sizes} ({len(unexpected)} unexpected); {_FIX}")


def read_checkpoint(path) -> tuple[dict, dict]:
    """Read a dfer checkpoint: (state dict of float32 CPU tensors, metadata dict).

    The header is validated and the tensor names and shapes checked against its config
    (:func:`check_tensors`) before any tensor data is read."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    check_tensors(path, meta)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read tensors ({_first_line(e)}); the file may be "
                              "truncated -- re-download or re-save it") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, meta


def load_model(name_or_path="logo_former_fer2013", device="cpu", *, for_inference: bool = False):
    """Rebuild a model from a checkpoint path or a weights name (see weights.py).

    Returns the model in eval mode on ``device`` with ``.classes`` (list of str),
    ``.preprocessing`` (Preprocessing), ``.provenance`` (dict), ``.sampling`` (the frame
    sampling it was trained with, ``uniform`` or ``segments8x2``) and ``.checkpoint_path``.
    ``for_inference=True``: folded for inference (`models.folding.fold_for_inference`), as
    `predict_video` wants it; it can then be neither trained nor saved.
    Raises CheckpointError (one line naming the file and the fix) for any unusable file.
    """
    from dfer_cli.weights import find_weights

    try:
        path = find_weights(name_or_path)
    except FileNotFoundError as e:
        raise CheckpointError(str(e)) from None
    state, meta = read_checkpoint(path)  # validated: a known model, a config that fits the tensors
    name = meta["model"]
    try:
        with _without_init():  # every tensor is loaded below, strictly
            model = build_model(meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its config does not build a {name} ({e}); upgrade dfer") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: tensors do not fit a {name} with this config "
                              f"({_first_line(e)}); re-save the checkpoint") from None
    model.classes = list(meta["classes"])
    model.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    model.provenance = dict(meta.get("provenance") or {})
    model.sampling = meta["sampling"]  # the frame sampling it was trained with (validated)
    model.calibration = meta.get("calibration")  # {"temperature": T, ...} or None (calibration.py)
    model.checkpoint_path = str(path)
    model.dfer_meta = meta
    model = model.to(device).eval()
    if for_inference:
        from dfer_cli.models.folding import fold_for_inference

        fold_for_inference(model)
    return model


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]
