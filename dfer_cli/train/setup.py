"""What a training run is built from: datasets (with a held-out split carved from train), the
model, optimiser, loss, precision, data loader and progress reporting.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

from dfer_cli.device import cpu_has_native_bf16
from dfer_cli.labels import CLASSES
from dfer_cli.train.batches import EpochBatches, EpochSampler, still_batches
from dfer_cli.train.config import SAM_OPTIMIZERS, TrainConfig
from dfer_cli.train.run_folder import TrainState


def _dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment, (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def build_optimizer(params, cfg: TrainConfig):
    import torch

    from dfer_cli.train.optim import SAM

    if cfg.optimizer == "sam":
        return SAM(params, torch.optim.SGD, rho=cfg.rho, lr=cfg.lr, momentum=cfg.momentum,
                   weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    if cfg.optimizer == "sam-adamw":
        return SAM(params, torch.optim.AdamW, rho=cfg.rho, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_loss(cfg: TrainConfig, model):
    import torch

    if cfg.loss == "ce":
        return torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    from dfer_cli.train.losses import CompactLoss

    lam = cfg.lam if cfg.lam is not None else getattr(model.config, "compact_lambda", None)
    return CompactLoss() if lam is None else CompactLoss(lam=lam)


def load_datasets(cfg: TrainConfig, log=None):
    """(train ClipDataset, val ClipDataset or None, data provenance dict) for `cfg`."""
    from dfer_cli.data import ClipDataset, class_counts, scan
    from dfer_cli.data.transforms import Augment

    pre = cfg.preprocessing()
    aug = Augment(crop_scale=(cfg.crop_scale, 1.0), flip=cfg.flip, motion=cfg.motion)
    samples, report = scan(cfg.dataset, cfg.data_root, cfg.split, fold=cfg.fold, limit=cfg.limit, seed=cfg.seed)
    table = None
    if cfg.votes:
        from dfer_cli.data.votes import attach_votes, read_vote_tables

        table = read_vote_tables(cfg.votes)
        n = len(samples)
        samples = attach_votes(samples, table, cfg.data_root, cfg.split, report)
        if log:
            log(f"{cfg.split}: {len(samples)} of {n} samples have votes in {table.path} ({table.layout}); "
                "training on their vote shares, labelled by plurality")
    if report.problems and log:
        log(f"{cfg.split}: " + report.summary().replace("\n", f"\n{cfg.split}: "))
    if not samples:
        raise ValueError(f"no training samples found in {cfg.data_root} (split {cfg.split!r})"
                         + (" with votes: check that the CSV's 'file' paths are relative to --data-root"
                            if cfg.votes else ""))
    held, twins = [], []
    if cfg.holdout:
        samples, held = holdout_split(samples, cfg.holdout, cfg.split_seed)
        if cfg.holdout_unseen:
            held, twins = unseen_held_out(samples, held)
            if log:
                log(f"--holdout-unseen: validating on {len(held)} held-out images; {len(twins)} others have a "
                    "near-duplicate among the training images and are left out of both")
    train_ds = ClipDataset(samples, pre, train=True, augment=aug, seed=cfg.seed, sampling=cfg.sampling)
    prov = {"dataset": cfg.dataset, "root": os.path.abspath(cfg.data_root), "split": cfg.split,
            "fold": cfg.fold, "train_samples": len(samples),
            "train_class_counts": dict(zip(CLASSES, class_counts(samples))),
            "votes": [os.path.basename(v) for v in cfg.votes],
            "train_skipped": report.counts()}
    val_ds = None
    if held:
        val_ds = ClipDataset(held, pre, train=False, test_clips=cfg.test_clips, sampling=cfg.sampling)
        unseen = ", images without a near-duplicate in training only" if cfg.holdout_unseen else ""
        prov.update(val_split=f"holdout {cfg.holdout:g} of {cfg.split} (stratified, seed {cfg.split_seed}{unseen})",
                    val_samples=len(held), val_class_counts=dict(zip(CLASSES, class_counts(held))),
                    holdout_sha256=names_digest(held))
        if cfg.holdout_unseen:
            prov["holdout_twins"] = len(twins)
    if cfg.val_split:
        vs, vreport = scan(cfg.dataset, cfg.data_root, cfg.val_split, fold=cfg.fold, limit=cfg.val_limit,
                           seed=cfg.seed)
        if table is not None:
            vs = attach_votes(vs, table, cfg.data_root, cfg.val_split, vreport)
        if vreport.problems and log:
            log(f"{cfg.val_split}: " + vreport.summary().replace("\n", f"\n{cfg.val_split}: "))
        if vs:
            val_ds = ClipDataset(vs, pre, train=False, test_clips=cfg.test_clips, sampling=cfg.sampling)
        prov.update(val_split=cfg.val_split, val_samples=len(vs), val_skipped=vreport.counts())
    return train_ds, val_ds, prov


def unseen_held_out(train: list, held: list) -> tuple[list, list]:
    """``held`` split into (samples with no near-duplicate among ``train``, samples with one),
    by difference hash (``data.duplicates``). Still images only: a held-out clip has no single
    image to compare. Raises ValueError naming a sample that is not an image file."""
    from dfer_cli.data.base import IMAGE_EXTS
    from dfer_cli.data.duplicates import unseen_mask

    for s in (*held, *train):
        if not (os.path.isfile(s.path) and os.path.splitext(str(s.path))[1].lower() in IMAGE_EXTS):
            raise ValueError(f"--holdout-unseen compares still images, and {s.path} is not an image file; "
                             "leave --holdout-unseen out for clip datasets")
    mask = unseen_mask([s.path for s in held], [s.path for s in train])
    return [s for s, m in zip(held, mask) if m], [s for s, m in zip(held, mask) if not m]


def selection_record(cfg: TrainConfig) -> dict | None:
    """What a run's ``best`` checkpoint is selected on (highest validation UAR): the
    dataset, split (canonical name: DFEW/FERV39K 'val' is 'test'), fold, holdout fraction
    (> 0: a held-out part of the training split) and data root; None without validation.
    ``dfer eval`` reads it to never score a checkpoint on the split it was chosen on."""
    from dfer_cli.data import canonical_split

    if not (cfg.holdout or cfg.val_split):
        return None
    return {"metric": "val_uar", "dataset": cfg.dataset,
            "split": canonical_split(cfg.dataset, cfg.split if cfg.holdout else cfg.val_split),
            "fold": cfg.fold, "holdout": cfg.holdout or None, "root": os.path.abspath(cfg.data_root)}


RANDOM_TRUNK_WARNING = ("dfer: warning: the ResNet-18 trunk starts from random weights; STT and LOGO-Former start "
                        "from a ResNet-18 pre-trained on MS-Celeb-1M: pass one with --backbone-weights FILE.pth "
                        "(or a dfer checkpoint with --init CKPT)")


def holdout_split(samples: list, fraction: float, seed: int) -> tuple[list, list]:
    """(kept, held out): ``round(fraction * n_c)`` samples of every class c held out, chosen
    by a generator seeded with ``seed`` alone, so the same data and seed always hold out the
    same samples (whatever the run's other settings). Order within each part is kept."""
    rng = np.random.default_rng([seed, 1009])
    labels = np.array([s.label for s in samples])
    out = np.zeros(len(samples), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(fraction * len(idx)))
        out[rng.permutation(idx)[:k]] = True
    return ([s for s, o in zip(samples, out) if not o], [s for s, o in zip(samples, out) if o])


def names_digest(samples: list) -> str:
    """sha256 of the sorted sample paths relative to their dataset root's class folders."""
    import hashlib

    names = sorted(os.path.join(os.path.basename(os.path.dirname(s.path)), os.path.basename(s.path))
                   for s in samples)
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def class_counts_of(dataset) -> list[float]:
    """Samples per class (dfer's class order) in a ClipDataset; with votes, the summed vote
    shares (the prior the soft targets train towards)."""
    from dfer_cli.data import class_mass

    return class_mass(dataset.samples)


def resolve_precision(precision: str, device) -> str:
    """The precision a run uses on ``device``: 'auto' picks bf16 on CUDA when supported
    (else fp16) and fp32 on CPU. Raises ValueError for fp16 on CPU (no fast kernels, and
    no GradScaler there)."""
    import torch

    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA device; use --precision bf16 on CPU")
    return precision


def precision_note(requested: str, used: str, device) -> str:
    """What the run's log says after its precision: a hint when an fp32 run on the CPU
    could use the CPU's native bf16 (measured 1.7-1.8x the fp32 training throughput on 2
    AVX512-BF16 cores, benchmarks/precision.py), and a warning when bf16 was asked for on a
    CPU without it (PyTorch then emulates bf16, slower than fp32)."""
    on_cpu = getattr(device, "type", "") == "cpu"
    if used == "fp32" and requested == "auto" and on_cpu and cpu_has_native_bf16():
        return " (this CPU has native bf16: --precision bf16 trains about 1.7x faster)"
    if used == "bf16" and on_cpu and not cpu_has_native_bf16():
        return (" (warning: this CPU has no native bf16, AVX512-BF16 or AMX, so PyTorch emulates it "
                "and training is slower than fp32: use --precision fp32)")
    return ""


@dataclass
class Run:
    """Everything one training run holds while its epochs run (built by :func:`train`)."""
    cfg: TrainConfig
    device: object                 # torch.device
    rank: int
    world: int                     # processes (torchrun); 1 for a single process
    rep: Reporter
    model: object                  # the Former being trained
    net: object                    # model, or its DistributedDataParallel wrapper
    params: list                   # parameters that get gradients
    optimizer: object
    criterion: object
    loader: object                 # yields (x (B, T, 3, S, S), y (B,) or soft targets (B, C))
    counters: TrainState
    scaler: object = None          # GradScaler under fp16 autocast on CUDA
    log_prior: object = None       # (C,) logit adjustment added during training, or None
    teachers: object = None        # distill.Teachers, or None
    precision: str = "fp32"        # fp32 | bf16 | fp16 (autocast)
    autocast_dtype: object = None
    total_steps: int = 0
    warmup_steps: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


PER_RUN_SIZES = ("num_frames", "input_size", "num_classes", "backbone_weights")


def setup_processes(cfg: TrainConfig):
    """(rank, world size, torch device): threads set, and the process group joined under torchrun."""
    import torch
    import torch.distributed as dist

    from dfer_cli.device import resolve_device

    rank, world, local_rank = _dist_info()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def setup_model(cfg: TrainConfig, resume: bool, device, rep: Reporter, warn: bool):
    """The model to train, on ``device``: from ``--init`` (partial load) or fresh, trunk frozen
    and channels-last as asked. Under ``--init`` the sizes follow that checkpoint unless
    ``--model-opt`` overrides them (frames and input size always come from ``cfg``)."""
    import torch

    from dfer_cli import checkpoint as ckpt
    from dfer_cli.models import create_model
    from dfer_cli.models.transfer import load_state_partial

    opts, init_state = dict(cfg.model_opts), None
    if cfg.init and not resume:
        init_state, init_meta = ckpt.read_checkpoint(cfg.init)
        if init_meta["model"] == "ensemble":
            raise ValueError(f"--init {cfg.init}: an ensemble of {len(init_meta['config']['members'])} models, "
                             "and a run trains one; start from one member: `dfer weights export "
                             f"{cfg.init} member.safetensors --member 1 --float32`, then --init member.safetensors")
        inherited = {k: v for k, v in init_meta.get("config", {}).items() if k not in PER_RUN_SIZES}
        opts = cfg.model_opts = {**inherited, **opts}
    model = create_model(cfg.model, num_frames=cfg.frames, input_size=cfg.input_size,
                         num_classes=len(CLASSES), **opts)
    if not resume and not cfg.init and not opts.get("backbone_weights") and warn:
        print(RANDOM_TRUNK_WARNING, file=sys.stderr, flush=True)  # once, even with --quiet
    if init_state is not None:
        loaded, skipped = load_state_partial(model, init_state)
        rep.log(f"init from {cfg.init}: {len(loaded)} tensors loaded, {len(skipped)} skipped"
                + (f" ({'; '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''})" if skipped else ""))
    if cfg.freeze_backbone:
        # parameters without grad and inputs without grad: autograd records nothing in the
        # trunk, so it runs as under no_grad (no activations kept for backward)
        model.backbone.requires_grad_(False)
    if trunk_channels_last(resolve_precision(cfg.precision, device), device):
        # the trunk's 2-d convolutions only (the LOGO pool is a 3-d conv: no channels_last)
        model.backbone.to(memory_format=torch.channels_last)
    return model.to(device)


def trunk_channels_last(precision: str, device) -> bool:
    """Whether training keeps the trunk in channels_last memory format: under bf16/fp16
    autocast, and on the CPU at any precision. oneDNN's convolutions run faster on NHWC:
    measured with ``benchmarks/precision.py`` on 2 AVX512-BF16 cores, fp32 training is 1.17x
    as fast at 64 px and 1.07x at 96 px. The weights are the same numbers either way;
    checkpoints are stored contiguous."""
    return precision in ("bf16", "fp16") or getattr(device, "type", str(device)) == "cpu"


def build_run(cfg: TrainConfig, model, train_ds, device, rank: int, world: int, rep: Reporter) -> Run:
    """Optimizer, loss, precision and logit adjustment around ``model``."""
    import torch

    precision = resolve_precision(cfg.precision, device)
    params = [p for p in model.parameters() if p.requires_grad]
    run = Run(cfg=cfg, device=device, rank=rank, world=world, rep=rep, model=model, net=model, params=params,
               optimizer=build_optimizer(params, cfg), criterion=build_loss(cfg, model), loader=None,
               counters=TrainState(), precision=precision,
               autocast_dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
    if precision == "fp16":
        if cfg.optimizer in SAM_OPTIMIZERS:
            raise ValueError(f"--precision fp16 with --optimizer {cfg.optimizer} is not supported (SAM's two steps "
                             "and a GradScaler do not mix); use --precision bf16")
        run.scaler = torch.amp.GradScaler("cuda")
    if cfg.logit_adjust:
        from dfer_cli.train.losses import logit_adjustment
        run.log_prior = logit_adjustment(class_counts_of(train_ds), cfg.logit_adjust).to(device)
    if cfg.teachers:
        from dfer_cli.train.distill import Teachers, describe_teachers

        run.teachers = Teachers(cfg.teachers, list(CLASSES), cfg.preprocessing(), cfg.frames, device=device,
                                sampling=cfg.sampling, recipe=cfg.to_dict())
        rep.log(describe_teachers(run.teachers.records))
        if rank == 0:
            for warning in run.teachers.warnings:
                print(f"dfer: warning: {warning}", file=sys.stderr, flush=True)
    return run


def make_loader(run: Run, train_ds):
    """Set ``run.loader`` and the lr schedule's step counts; returns (sampler, batches).

    Every clip every epoch; under DDP the sampler repeats a few clips so that all processes
    get the same number (and run the same number of steps).
    """
    from torch.utils.data import DataLoader, DistributedSampler

    cfg = run.cfg
    sampler = (DistributedSampler(train_ds, num_replicas=run.world, rank=run.rank, seed=cfg.seed, drop_last=False)
               if run.distributed else EpochSampler(len(train_ds), cfg.seed))
    # the trunk's BatchNorm sees B*T frames: only B = T = 1 cannot be normalised
    batches = EpochBatches(sampler, cfg.batch_size, merge_single=cfg.frames == 1)
    if cfg.frames == 1 and len(sampler) == 1:
        raise ValueError("one training clip with --frames 1 cannot be trained (BatchNorm needs at least "
                         "two frames per batch); add clips or use --frames 2 or more")
    loader = None if run.distributed else still_batches(train_ds, cfg, sampler, batches.sizes())
    if loader is None:
        loader = DataLoader(train_ds, batch_sampler=batches, num_workers=cfg.workers,
                            pin_memory=run.device.type == "cuda")
    run.loader = loader
    run.total_steps = len(loader) * cfg.epochs
    run.warmup_steps = int(round(cfg.warmup_epochs * len(loader)))
    return sampler, batches


class Reporter:
    """Progress on stderr: a rich bar on a terminal, plain log lines otherwise."""

    def __init__(self, enabled: bool, log_every: int, rich_bar: bool | None = None):
        self.enabled = enabled
        self.log_every = max(1, log_every)
        self.rich = enabled and (sys.stderr.isatty() if rich_bar is None else rich_bar)
        self._progress = None

    def log(self, msg: str) -> None:
        if self.enabled:
            if self._progress is not None:
                self._progress.console.print(msg)
            else:
                print(msg, file=sys.stderr, flush=True)

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None:
        if not self.rich:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                  console=Console(stderr=True), transient=True)
        self._progress.start()
        self._task = self._progress.add_task("train", total=batches, epoch=f"{epoch}/{epochs}", info="")

    def batch(self, epoch: int, epochs: int, i: int, batches: int, loss: float, lr: float, rate: float) -> None:
        info = f"loss {loss:.4f}  lr {lr:.2e}  {rate:.1f} clips/s"
        if self._progress is not None:
            self._progress.update(self._task, completed=i, info=info)
        elif self.enabled and (i % self.log_every == 0 or i == batches):
            print(f"epoch {epoch}/{epochs} batch {i}/{batches}  {info}", file=sys.stderr, flush=True)

    def end_epoch(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
