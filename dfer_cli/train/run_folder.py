"""A training run's folder: what `dfer train` writes each epoch and reads back on resume.

    command.sh        how the run was started, and the line that resumes it
    config.json       the TrainConfig
    metrics.jsonl/csv one row per finished epoch
    last.safetensors / best.safetensors   dfer checkpoints (written by the training loop)
    state.pt          model + optimizer + RNG + counters: the epoch's commit point

Every file goes through a temporary name and a rename, so a run killed at any moment
leaves the previous epoch's files whole; metric rows after the last committed epoch are
dropped when the run resumes.
"""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
import sys
from dataclasses import dataclass

from dfer_cli.fsutil import atomic_write_bytes, atomic_write_text


@dataclass
class TrainState:
    """Counters a resumed run continues from (the model, optimizer and RNG are restored in place)."""
    epoch: int = 0              # epochs finished
    step: int = 0               # optimizer steps taken (drives the per-step lr schedule)
    best_uar: float = -1.0      # best validation UAR so far (-1: none yet)
    best_epoch: int | None = None


def write_run_command(out: str, argv: list[str] | None) -> None:
    """Write ``command.sh`` into the run folder: the command that started the run and the
    one that resumes it, so a background run can be picked up after a reboot."""
    import shlex

    if not argv:
        return
    args = [a for a in argv if a != "--resume"]
    started = " ".join(shlex.quote(a) for a in args)
    if args[0] == "dfer":  # the same interpreter, whether or not its venv is active
        args = [sys.executable, "-m", "dfer_cli", *args[1:]]
    resume = " ".join(shlex.quote(a) for a in args) + ' --resume "$@"'
    text = (f"#!/bin/sh\n# started with:\n# {started}\n"
            "# resume (continues after the last finished epoch; same schedule, data order and RNG):\n"
            f"cd {shlex.quote(os.getcwd())} && exec {resume}\n")
    atomic_write_text(os.path.join(out, "command.sh"), text)


def optimizer_param_names(model, optimizer) -> list[str]:
    """Names of the optimizer's parameters in its slot order (param groups in turn)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    try:
        return [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]
    except KeyError:
        raise ValueError("the optimizer holds a parameter that is not in the model") from None


class _SlotMismatch(ValueError):
    """A train state whose optimizer slots do not fit the model being resumed."""


def _optimizer_state_by_name(saved: dict, saved_names: list[str] | None, model, optimizer) -> dict:
    """The saved optimizer state with its slots renumbered to the optimizer's current order.

    torch numbers optimizer slots by position, so a state saved before parameters were
    registered in another order (a new dfer version) would hand one tensor's momentum to
    another -- silently when the shapes agree. With the names saved alongside, slots follow
    their names; an old state without names is accepted only if every slot's tensors have
    the shape of the parameter now in that position.
    """
    names = optimizer_param_names(model, optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if saved_names is not None:
        if sorted(saved_names) != sorted(names):
            gone = sorted(set(saved_names) - set(names))
            new = sorted(set(names) - set(saved_names))
            raise _SlotMismatch(f"its parameters differ from this model's (only in the state: {gone[:3]}, "
                                f"only in the model: {new[:3]})")
        now = {n: i for i, n in enumerate(names)}
        order = [now[n] for n in saved_names]  # saved slot i -> current slot
        groups, at = [], 0
        for g_saved, g_now in zip(saved["param_groups"], optimizer.param_groups, strict=True):
            ids = [order[i] for i in g_saved["params"]]
            mine = list(range(at, at + len(g_now["params"])))
            if sorted(ids) != mine:
                raise _SlotMismatch("its parameter groups differ from this run's")
            groups.append({**g_saved, "params": mine})
            at += len(mine)
        saved = {"state": {order[int(i)]: s for i, s in saved["state"].items()}, "param_groups": groups}
    for i, slot in saved["state"].items():
        for key, t in slot.items():
            if hasattr(t, "shape") and t.ndim > 0 and t.shape != params[int(i)].shape:
                raise _SlotMismatch(f"its optimizer {key} for {names[int(i)]} has shape {tuple(t.shape)}, "
                                    f"the parameter {tuple(params[int(i)].shape)}")
    return saved


def save_state(path: str, model, optimizer, counters: TrainState, device) -> None:
    """Write the resume state (plain tensors and dicts only) atomically: the epoch's commit point.

    The optimizer's slots are saved with their parameter names, so a resume maps them by name.
    """
    import torch

    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "param_names": optimizer_param_names(model, optimizer), "epoch": counters.epoch,
             "step": counters.step, "best_uar": counters.best_uar, "best_epoch": counters.best_epoch,
             "torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: str, model, optimizer, device) -> TrainState:
    """Restore model, optimizer and RNG from ``path`` in place and return the counters.

    Read with ``torch.load(weights_only=True)``. A truncated, damaged or foreign file is one
    ValueError line naming the file; torch's own message for a pickle it refuses suggests
    ``weights_only=False``, which must not be passed on.
    """
    import torch

    from dfer_cli.fsutil import quiet_pickle_protocol

    try:
        with quiet_pickle_protocol():
            state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(_optimizer_state_by_name(state["optimizer"], state.get("param_names"),
                                                           model, optimizer))
        counters = TrainState(int(state["epoch"]), int(state["step"]), float(state["best_uar"]),
                              state["best_epoch"])
        if counters.epoch < 0 or counters.step < 0 or not (
                counters.best_epoch is None or type(counters.best_epoch) is int):
            raise ValueError("its epoch, step or best epoch is out of range")
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
    except _SlotMismatch as e:
        raise ValueError(f"cannot resume: {path} does not fit this model ({e}); resume it with the dfer "
                         "version that started the run, or start the run again without --resume") from None
    except Exception as e:  # noqa: BLE001 -- any unusable state becomes one clear line
        text = str(e).strip()
        reason = text.splitlines()[0][:200] if text else type(e).__name__
        if isinstance(e, KeyError):
            reason = f"it has no {e.args[0]!r} entry"
        elif isinstance(e, pickle.UnpicklingError) or "weights" in reason.lower():
            reason = "it holds something other than plain tensors and dicts"
        raise ValueError(f"cannot resume: {path} is damaged or not a dfer train state ({reason}); "
                         "start the run again without --resume, or restore the file") from None
    return counters


def open_tensorboard(out: str):
    """A tensorboard SummaryWriter under ``out/tensorboard``, or None when tensorboard is
    not installed (the scalars are in metrics.jsonl either way)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter(os.path.join(out, "tensorboard"))
    except Exception:  # noqa: BLE001
        return None


def append_metrics(out: str, row: dict) -> None:
    """Append an epoch's row to metrics.jsonl (strict JSON: a NaN or infinite value, e.g. the
    loss of a diverged epoch, is written as null) and to metrics.csv."""
    from dfer_cli.results import strict_json

    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write(strict_json(row) + "\n")
    flat = {k: v for k, v in row.items() if not isinstance(v, dict)}
    flat.update({f"val_recall_{c}": r for c, r in row.get("val_recall", {}).items()})
    path = os.path.join(out, "metrics.csv")
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(flat))
        if new:
            w.writeheader()
        w.writerow(flat)


def _epoch_of(line: str, jsonl: bool):
    """The epoch of a complete metrics row, or None for a partial or unreadable one."""
    if not line.endswith("\n") or not line.strip():
        return None
    try:
        epoch = json.loads(line)["epoch"] if jsonl else int(line.split(",", 1)[0])
    except (ValueError, TypeError, KeyError, IndexError, RecursionError):
        return None
    return epoch if type(epoch) is int else None


def truncate_metrics(out: str, done_epochs: int) -> None:
    """Drop metric rows of epochs after the last committed one (a run killed between
    logging an epoch and committing its state re-runs that epoch). A partial row (a last
    line cut short, without its newline) or any row that does not parse is dropped too."""
    for name in ("metrics.jsonl", "metrics.csv"):
        path = os.path.join(out, name)
        if not os.path.exists(path):
            continue
        if done_epochs == 0:
            os.remove(path)
            continue
        with open(path, errors="replace") as f:
            lines = f.readlines()
        if name.endswith(".jsonl"):
            keep = [ln for ln in lines if (e := _epoch_of(ln, True)) is not None and e <= done_epochs]
        else:
            keep = lines[:1] + [ln for ln in lines[1:] if (e := _epoch_of(ln, False)) is not None
                                and e <= done_epochs]
        atomic_write_text(path, "".join(keep))
