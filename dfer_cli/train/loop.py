"""Training loop: single process, or DistributedDataParallel under ``torchrun``.

The defaults are the ``dfer`` recipe (:data:`RECIPES`): 16 frames at 112x112, random resized
crop + horizontal flip, SGD (momentum 0.9) wrapped in SAM (rho 0.05), lr 1e-3, batch 32,
100 epochs, compact loss, one frame from each of 16 segments. The ``paper`` recipe is the
settings STT / LOGO-Former state, with Former-DFER's 8 segments x 2 consecutive frames
(``sampling="segments8x2"``); docs/training.md marks which values are the papers'. The
run's ``best`` checkpoint records what it was selected on (:func:`selection_record`), so
evaluation never scores it on that split. The learning rate follows a linear
warmup then a cosine decay to ``min_lr`` computed per step from the global step count
(``schedule="constant"`` keeps it flat). Every field of :class:`TrainConfig` is written
into the checkpoint's provenance and ``config.json``.

Run folder (``output``):
  last.safetensors   model after the latest finished epoch (dfer checkpoint)
  best.safetensors   model of the epoch with the best validation UAR
  state.pt           resume state: model, optimizer, RNG, epoch, step, best (plain tensors
                     and dicts, read back with ``torch.load(weights_only=True)``)
  config.json        the TrainConfig
  metrics.jsonl / metrics.csv   one row per epoch
Every file is written to a temporary name and renamed, so a run killed at any moment
resumes (``resume=True``) from its last finished epoch, and resumes exactly: data order and
augmentation are functions of (seed, epoch, index), and the torch RNG is restored.
"""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np

from dfer_cli.fsutil import atomic_write_text
from dfer_cli.labels import CLASSES
from dfer_cli.train.batches import describe_batches, lr_at
from dfer_cli.train.config import SAM_OPTIMIZERS, TrainConfig
from dfer_cli.train.run_folder import (
    append_metrics,
    load_state,
    open_tensorboard,
    save_state,
    truncate_metrics,
    write_run_command,
)
from dfer_cli.train.setup import (
    PER_RUN_SIZES,
    Reporter,
    Run,
    build_run,
    load_datasets,
    make_loader,
    precision_note,
    selection_record,
    setup_model,
    setup_processes,
)


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True, rich_bar: bool | None = None,
          argv: list[str] | None = None) -> dict:
    """Train a model as `cfg` says and write the run folder; returns a summary dict
    (epochs done, best epoch, best and last validation scores, output paths).

    Under ``torchrun`` (WORLD_SIZE > 1) the batch is per process, gradients are averaged
    with DistributedDataParallel (gloo on CPU, nccl on CUDA) and only rank 0 writes.
    """
    import torch
    import torch.distributed as dist

    if resume:
        cfg = _resumed_config(cfg)
    cfg.validate()
    rank, world, device = setup_processes(cfg)
    rep = Reporter(progress and rank == 0, cfg.log_every, rich_bar)

    torch.manual_seed(cfg.seed)  # before the model is built: its initial weights follow the seed
    train_ds, val_ds, data_prov = load_datasets(cfg, rep.log)
    model = setup_model(cfg, resume, device, rep, warn=rank == 0)
    run = build_run(cfg, model, train_ds, device, rank, world, rep)
    state_path = os.path.join(cfg.output, "state.pt")
    if resume:
        _check_same_teachers(run)
        run.counters = load_state(state_path, model, run.optimizer, device)
        rep.log(f"resuming {cfg.output} after epoch {run.counters.epoch}")
    if run.distributed:
        run.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler, batches = make_loader(run, train_ds)

    tb = _open_run_folder(cfg, resume, argv, run.counters.epoch) if run.is_main else None
    padded = len(sampler) * world - len(train_ds)
    rep.log(f"training {cfg.model} on {len(train_ds)} clips ({describe_batches(batches.sizes())}"
            f"{f' x {world} processes' if run.distributed else ''}"
            f"{f', {padded} repeated to even out the processes' if padded else ''}), validating on "
            f"{len(val_ds) if val_ds else 0}; device {device}, {run.precision}"
            f"{precision_note(cfg.precision, run.precision, device)}; output {cfg.output}")

    last_scores = None
    for epoch in range(run.counters.epoch, cfg.epochs):
        for source in (train_ds, sampler, run.loader):   # data order and augmentation of this epoch
            if hasattr(source, "set_epoch"):
                source.set_epoch(epoch)
        row = train_one_epoch(run, epoch)
        if val_ds is not None:
            last_scores = validate(run, val_ds, row)
        rep.log(_epoch_line(epoch + 1, cfg.epochs, row))
        if run.is_main:
            _finish_epoch(run, epoch, row, data_prov, argv, val_ds is not None, state_path, tb)
        if run.distributed:
            dist.barrier()

    if tb is not None:
        tb.close()
    if run.distributed and dist.is_initialized():
        dist.destroy_process_group()
    best_epoch = run.counters.best_epoch
    return {"output": cfg.output, "epochs": cfg.epochs, "best_epoch": best_epoch,
            "best_uar": run.counters.best_uar if best_epoch else None,
            "last": last_scores.to_dict() if last_scores is not None else None}


def _check_same_teachers(run: Run) -> None:
    """A resumed run must distil from the files it started with: compare their sha256 with
    those its last checkpoint recorded (ValueError naming the file otherwise)."""
    last = os.path.join(run.cfg.output, "last.safetensors")
    if run.teachers is None or not os.path.isfile(last):
        return
    from dfer_cli.checkpoint import read_metadata

    recorded = (read_metadata(last).get("provenance") or {}).get("teachers") or []
    if len(recorded) != len(run.teachers.records):
        raise ValueError(f"cannot resume: the run recorded {len(recorded)} teacher(s), its config names "
                         f"{len(run.teachers.records)}; resume the run as it was started")
    for now, then in zip(run.teachers.records, recorded):
        if now["sha256"] != then.get("sha256"):
            raise ValueError(f"cannot resume: teacher {now['file']} has changed since the run started (sha256 "
                             f"{now['sha256'][:12]}, was {str(then.get('sha256'))[:12]}); put the original back "
                             "or start a new run")


def _resumed_config(cfg: TrainConfig) -> TrainConfig:
    """The config a run in ``cfg.output`` was started with; only machine settings come from ``cfg``."""
    out = cfg.output
    if not os.path.isfile(os.path.join(out, "state.pt")):
        raise ValueError(f"cannot resume: {os.path.join(out, 'state.pt')} does not exist (start without --resume)")
    path = os.path.join(out, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            saved = TrainConfig.from_dict(json.load(f))
    except (OSError, ValueError, TypeError, AttributeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise ValueError(f"cannot resume: {path} is missing or damaged ({reason}); restore it (command.sh holds "
                         "the run's flags) or start again without --resume") from None
    # the run is the folder the user named, even when it was copied or moved there
    saved.output = out
    for k in ("workers", "threads", "device", "log_every"):
        setattr(saved, k, getattr(cfg, k))
    # precision is a property of the machine too (bf16 is fast only where the CPU or GPU has
    # it): an explicit --precision wins, "auto" keeps the run's own
    if cfg.precision != "auto":
        saved.precision = cfg.precision
    # and its model: sizes the run left to defaults (e.g. the LOGO window, whose default
    # changed) come from the config its last checkpoint was saved with
    last = os.path.join(out, "last.safetensors")
    if os.path.isfile(last):
        from dfer_cli.checkpoint import read_metadata

        built = read_metadata(last).get("config", {})
        saved.model_opts = {**{k: v for k, v in built.items() if k not in PER_RUN_SIZES}, **saved.model_opts}
    return saved


def _open_run_folder(cfg: TrainConfig, resume: bool, argv, done_epochs: int):
    """Create the run folder, write config.json and command.sh, drop metric rows after the
    last committed epoch; returns a tensorboard writer or None."""
    out = cfg.output
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "config.json"), json.dumps(cfg.to_dict(), indent=2) + "\n")
    if not (resume and os.path.exists(os.path.join(out, "command.sh"))):
        write_run_command(out, argv)
    truncate_metrics(out, done_epochs)
    return open_tensorboard(out)


def train_one_epoch(run: Run, epoch: int) -> dict:
    """One pass over the training batches; returns the epoch's metrics row (loss, accuracy,
    lr, time, throughput; summed over processes under DDP)."""
    import torch
    import torch.distributed as dist

    cfg = run.cfg
    run.net.train()
    if cfg.freeze_backbone:
        run.model.backbone.eval()  # frozen BN statistics
    t0 = time.time()
    loss_sum, correct, seen, lr = 0.0, 0, 0, cfg.lr
    batches = len(run.loader)
    run.rep.start_epoch(epoch + 1, cfg.epochs, batches)
    for i, (x, y) in enumerate(run.loader, 1):
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        lr = lr_at(run.counters.step, run.total_steps, run.warmup_steps, cfg)
        for g in run.optimizer.param_groups:
            g["lr"] = lr
        loss, logits = training_step(run, x, y)
        run.counters.step += 1
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1} batch {i}: "
                                     "lower --lr or check the data")
        loss_sum += loss.item() * len(y)
        hard = y if y.ndim == 1 else y.argmax(-1)  # mixed batches: the larger share
        correct += int((logits.argmax(-1) == hard).sum())
        seen += len(y)
        run.rep.batch(epoch + 1, cfg.epochs, i, batches, loss_sum / seen, lr,
                      seen * run.world / max(1e-9, time.time() - t0))
    run.rep.end_epoch()
    train_time = time.time() - t0
    stats = torch.tensor([loss_sum, correct, seen], dtype=torch.float64)
    if run.distributed:
        dist.all_reduce(stats)
    return {"epoch": epoch + 1, "step": run.counters.step, "lr": lr,
            "train_loss": float(stats[0] / max(1, stats[2])), "train_acc": float(stats[1] / max(1, stats[2])),
            "train_time": round(train_time, 2), "clips_per_s": round(float(stats[2]) / max(1e-9, train_time), 2)}


def training_step(run: Run, x, y):
    """Forward, backward and one optimizer update on a batch; returns (loss, logits (B, C)).

    Under SAM the loss is evaluated twice: at the weights, then at the perturbed weights
    ``w + rho * g / ||g||`` whose gradient makes the update; BatchNorm running statistics
    count the first pass only (train/optim.py).
    """
    import torch

    cfg, params = run.cfg, run.params
    autocast = dict(device_type=run.device.type, dtype=run.autocast_dtype, enabled=run.precision != "fp32")
    soft = None
    if run.teachers is not None:  # once per batch, also under SAM: the target does not move
        with torch.autocast(**autocast):
            soft = run.teachers.probabilities(x, cfg.distill_temperature)  # (B, C)

    def forward_loss():
        with torch.autocast(**autocast):
            logits = run.net(x)                                        # (B, C)
        adjusted = logits.float() if run.log_prior is None else logits.float() + run.log_prior
        loss = run.criterion(adjusted, y)
        if soft is not None:
            from dfer_cli.train.losses import distillation_loss

            # raw logits against the teachers' raw logits: the same posterior when both were
            # trained with the same --logit-adjust (Teachers warns otherwise)
            kd = distillation_loss(logits.float(), soft, cfg.distill_temperature)
            loss = (1 - cfg.distill) * loss + cfg.distill * kd
        return loss, logits

    first: dict = {}

    def closure():
        """Loss and gradients at the current weights; the first call's are the step's."""
        loss, logits = forward_loss()
        if run.scaler is not None and not first:
            run.scaler.scale(loss).backward()
            run.scaler.unscale_(run.optimizer)
        else:
            loss.backward()
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        first.setdefault("out", (loss, logits))
        return loss

    if cfg.optimizer in SAM_OPTIMIZERS:
        # a mixup/cutmix batch is mixed once, before this step: both passes see the same x, y
        run.optimizer.step(closure, model=run.model)
    else:
        run.optimizer.zero_grad(set_to_none=True)
        closure()
        if run.scaler is not None:
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            run.optimizer.step()
    return first["out"]


def validate(run: Run, val_ds, row: dict):
    """Score the model on ``val_ds`` (each process its share, confusion matrices summed);
    adds val_war / val_uar / val_recall / val_time to ``row`` and returns the Scores."""
    import torch
    import torch.distributed as dist

    from dfer_cli.evaluation.run import predict_dataset, score
    from dfer_cli.metrics import Scores

    t1 = time.time()
    idx = range(run.rank, len(val_ds), run.world)
    probs, labels = predict_dataset(run.model, val_ds, batch_size=run.cfg.batch_size, device=run.device,
                                    indices=idx, workers=run.cfg.workers)
    cm = torch.from_numpy(score(probs, labels, CLASSES).confusion)
    if run.distributed:
        dist.all_reduce(cm)
    scores = Scores(list(CLASSES), cm.numpy())
    row.update(val_war=scores.war, val_uar=scores.uar, val_recall=scores.recall)
    if not run.distributed and val_ds.soft:
        from dfer_cli.metrics import mean_kl

        votes = np.array([val_ds.samples[i].votes for i in idx], dtype=np.float64)
        row["val_kl"] = mean_kl(votes, probs)
    row["val_time"] = round(time.time() - t1, 2)
    return scores


def _epoch_line(epoch: int, epochs: int, row: dict) -> str:
    line = f"epoch {epoch}/{epochs}  train loss {row['train_loss']:.4f} "
    if "val_war" in row:
        kl = f" KL {row['val_kl']:.4f}" if "val_kl" in row else ""
        return (line + f"acc {row['train_acc']:.4f}  val WAR {row['val_war']:.4f} UAR {row['val_uar']:.4f}{kl}  "
                f"({row['train_time']:.0f}s)")
    return line + f"acc {row['train_acc']:.4f}  ({row['train_time']:.0f}s)"


def _finish_epoch(run: Run, epoch: int, row: dict, data_prov: dict, argv, validated: bool,
                  state_path: str, tb) -> None:
    """Log the row, write last (and best, when validation UAR improved) checkpoints, then
    commit the resume state -- in that order, so a run killed in between redoes the epoch."""
    from dfer_cli import checkpoint as ckpt

    cfg, c, out = run.cfg, run.counters, run.cfg.output
    improved = validated and row.get("val_uar", -1.0) > c.best_uar
    if improved:
        c.best_uar, c.best_epoch = row["val_uar"], epoch + 1
    prov = {"recipe": cfg.to_dict(), "data": data_prov, "epoch": epoch + 1, "metrics": dict(row),
            "best_epoch": c.best_epoch, "world_size": run.world, "command": argv or []}
    if run.teachers is not None:
        prov["teachers"] = run.teachers.records
    append_metrics(out, row)
    if tb is not None:
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "epoch":
                tb.add_scalar(k, v, epoch + 1)
        tb.flush()
    save = dict(classes=list(CLASSES), preprocessing=cfg.preprocessing(), sampling=cfg.sampling)
    if improved:
        ckpt.save_checkpoint(os.path.join(out, "best.safetensors"), run.model, **save,
                             provenance={**prov, "checkpoint": "best", "selected_on": selection_record(cfg)})
    ckpt.save_checkpoint(os.path.join(out, "last.safetensors"), run.model, **save,
                         provenance={**prov, "checkpoint": "last"})
    c.epoch = epoch + 1
    save_state(state_path, run.model, run.optimizer, c, run.device)  # the commit point of the epoch
