"""Device selection shared by predict, train and eval."""
from __future__ import annotations


class DeviceError(ValueError):
    """A device that is unknown or not available here (one line, naming the fix)."""


def resolve_device(name: str = "auto"):
    """Turn 'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' into a torch.device.

    'auto' picks CUDA when available, then Apple MPS, else CPU. An explicit device that is
    not available raises DeviceError (a ValueError) with a one-line reason.
    """
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} requested but CUDA is not available: use --device cpu or auto")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError("device 'mps' requested but MPS is not available: use --device cpu or auto")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise DeviceError(f"unknown device {name!r}: expected auto, cpu, cuda, cuda:N or mps")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes in bfloat16 natively (x86 AVX512-BF16 or AMX-BF16, read from
    /proc/cpuinfo; False where that cannot be read). Only there is bfloat16 faster than
    float32 on the CPU; elsewhere PyTorch emulates it and it is several times slower."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def autocast_dtype(device, precision: str = "auto"):
    """The dtype inference runs in under autocast on ``device`` (a torch.device), or None
    for float32. 'auto': float16 on CUDA, bfloat16 on a CPU with native bfloat16
    (`cpu_has_native_bf16`), float32 elsewhere; 'fp32', 'bf16', 'fp16' as named (fp16 only
    on CUDA: ValueError elsewhere)."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    kind = device.type
    if precision == "auto":
        if kind == "cuda":
            return torch.float16
        return torch.bfloat16 if kind == "cpu" and cpu_has_native_bf16() else None
    if precision == "fp32":
        return None
    if precision == "fp16" and kind != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use bf16 or fp32")
    if kind not in ("cuda", "cpu"):
        raise ValueError(f"precision {precision} is not available on {kind}; use fp32 or auto")
    return torch.bfloat16 if precision == "bf16" else torch.float16
