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

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from dfer_cli.device import cpu_has_native_bf16
from dfer_cli.fsutil import atomic_write_text
from dfer_cli.labels import CLASSES
from dfer_cli.preprocess import DEFAULT_TEMPLATE, Preprocessing, zoom_template
from dfer_cli.run_folder import (TrainState, append_metrics, load_state, open_tensorboard, save_state,
                                 truncate_metrics, write_run_command)

OPTIMIZERS = ("sam", "sam-adamw", "sgd", "adamw")
SAM_OPTIMIZERS = ("sam", "sam-adamw")   # two forward/backward passes per step
LOSSES = ("compact", "ce")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Training recipes: the values a recipe gives the flags it covers (an explicit flag wins).
# "dfer" is TrainConfig's defaults (tests/test_train.py checks they agree). "paper" is what
# STT (Ma, Sun, Li 2022) and LOGO-Former (Ma, Sun, Li, ICASSP 2023) state -- SGD inside SAM,
# lr 1e-3, batch 32, 100 epochs, 16 frames, 112x112, compact loss -- and Former-DFER's frame
# sampling (8 segments x 2 consecutive frames); what the papers do not state (momentum, weight
# decay, schedule, SAM rho, the compact loss lambda, augmentation) is pinned to dfer's values,
# each listed with its reason in docs/training.md. Pinned here so later changes to dfer's
# defaults never move the paper recipe.
_STATED = dict(optimizer="sam", lr=1e-3, batch_size=32, epochs=100, frames=16, input_size=112, loss="compact")
_UNSTATED = dict(momentum=0.9, weight_decay=1e-4, schedule="cosine", min_lr=0.0, warmup_epochs=0.0, rho=0.05,
                 lam=None, crop_scale=0.8, flip=0.5)
RECIPES = {
    "dfer": {**_STATED, **_UNSTATED, "sampling": "uniform"},
    "paper": {**_STATED, **_UNSTATED, "sampling": "segments8x2"},
}
DEFAULT_RECIPE = "dfer"
# the settings each paper states (docs/training.md's table marks the others as dfer's)
PAPER_STATED = tuple(_STATED) + ("sampling",)


def recipe_values(recipe: str, **given) -> dict:
    """The TrainConfig fields of ``recipe`` with ``given`` on top; a value of None in
    ``given`` means "not given" (the recipe's value stays). Raises ValueError for an unknown
    recipe."""
    if recipe not in RECIPES:
        raise ValueError(f"--recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
    return {**RECIPES[recipe], **{k: v for k, v in given.items() if v is not None}, "recipe": recipe}


@dataclass
class TrainConfig:
    # data
    dataset: str = "folder"            # folder | dfew | ferv39k | afew
    data_root: str = ""
    split: str = "train"               # training split (folder layouts: a sub-folder name)
    val_split: str | None = "val"      # validation split; None or "" disables validation
    holdout: float = 0.0               # >0: validate on this stratified, seeded fraction carved
                                       # out of the training split instead (val_split must be None)
    holdout_seed: int | None = None    # seed of that split (None: seed), so runs with other seeds
                                       # hold out, and select on, the same images
    holdout_unseen: bool = False       # validate only on held-out images without a near-duplicate
                                       # among the training images (the rest stay out of training)
    fold: int | None = None            # DFEW fold 1..5
    votes: list = field(default_factory=list)  # vote CSVs (data/votes.py): train on each image's
                                       # vote shares (soft cross-entropy) instead of its folder label
    limit: int | None = None           # keep a seeded random subset of the training samples
    val_limit: int | None = None       # same for validation
    # model and preprocessing
    model: str = "logo_former"
    model_opts: dict = field(default_factory=dict)  # overrides of the model config
    input_size: int = 112
    frames: int = 16
    grayscale: bool = False
    template: list | None = None       # 5 (x, y) unit landmark targets; default DEFAULT_TEMPLATE
    template_scale: float = 1.0        # zoom_template applied to the template (<1: more margin)
    detail_size: int | None = None     # native side of the training faces (48 for FER2013): video
                                       # faces are reduced to it before the resize (Preprocessing)
    init: str | None = None            # a dfer checkpoint to start from (partial load)
    freeze_backbone: bool = False      # trunk frozen (no grad, BN in eval mode)
    # augmentation
    crop_scale: float = 0.8            # random resized crop keeps [crop_scale, 1] of the area
    flip: float = 0.5
    motion: bool = True                # synthetic motion for still images
    # still images trained one frame at a time (frames=1) are augmented a batch at a time
    # (data/stills.py); these apply to them instead of crop_scale/motion
    rotate: float = 12.0               # max rotation, degrees
    zoom: float = 0.10                 # max relative zoom
    shift: float = 0.10                # max translation, fraction of the side
    erase: float = 0.5                 # random erasing probability
    mixup: float = 0.0                 # probability of a mixup batch (needs loss="ce")
    cutmix: float = 0.0                # probability of a cutmix batch (needs loss="ce")
    # optimisation
    epochs: int = 100
    batch_size: int = 32
    optimizer: str = "sam"             # sam (SGD inside SAM) | sam-adamw (AdamW inside SAM) | sgd | adamw
    lr: float = 1e-3
    min_lr: float = 0.0                # end of the cosine decay
    momentum: float = 0.9
    nesterov: bool = False             # Nesterov momentum for sgd / sam
    weight_decay: float = 1e-4
    rho: float = 0.05                  # SAM neighbourhood radius
    schedule: str = "cosine"           # cosine | constant
    warmup_epochs: float = 0.0
    loss: str = "compact"              # compact | ce
    lam: float | None = None           # compact loss weight (None: dfer_cli.losses default)
    label_smoothing: float = 0.0       # for loss="ce"
    logit_adjust: float = 0.0          # tau: train on logits + tau * log(class prior) (Menon et
                                       # al. 2021), test on raw logits: lifts rare-class recall (UAR)
    clip_grad: float = 0.0             # >0: clip the global gradient norm to this
    # knowledge distillation (distill.py): loss = (1 - distill) * label loss
    #   + distill * T^2 * KL(teachers' softmax(z/T) || student's softmax(z/T))
    teachers: list = field(default_factory=list)  # dfer checkpoints; several = an ensemble
    distill: float = 0.0               # weight of the distillation term, in [0, 1]
    distill_temperature: float = 1.0   # T: > 1 softens both distributions
    # recipe and frame sampling (fields added later: their defaults keep older runs' behaviour)
    recipe: str = "dfer"               # the recipe the run's defaults came from (RECIPES); recorded
    sampling: str = "uniform"          # uniform | segments8x2 (data/sampling.py); recorded in checkpoints
    # run
    seed: int = 0
    workers: int = 0                   # DataLoader worker processes
    threads: int | None = None         # torch CPU threads
    device: str = "auto"
    precision: str = "auto"            # fp32 | bf16 (autocast + channels_last, CPU or CUDA) | fp16
                                       # (CUDA, with a GradScaler) | auto (CUDA: bf16 if supported, else
                                       # fp16; CPU: fp32)
    test_clips: int = 1                # validation clips per sample (averaged)
    output: str = "runs/dfer"
    log_every: int = 50                # batches between plain log lines (non-terminal)

    def preprocessing(self) -> Preprocessing:
        tpl = tuple(tuple(p) for p in self.template) if self.template else DEFAULT_TEMPLATE
        if self.template_scale != 1.0:
            tpl = zoom_template(tpl, self.template_scale)
        return Preprocessing(input_size=self.input_size, num_frames=self.frames,
                             grayscale=self.grayscale, template=tpl,
                             detail_size=self.detail_size if self.detail_size and self.detail_size < self.input_size
                             else None)

    @property
    def split_seed(self) -> int:
        """The seed of the held-out split: ``holdout_seed``, or ``seed`` when it is not set."""
        return self.seed if self.holdout_seed is None else self.holdout_seed

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def validate(self) -> None:
        """Raise ValueError (one line, naming the flag) on an impossible setting."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"--loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"--schedule {self.schedule!r}: choose cosine or constant")
        for name in ("epochs", "batch_size", "frames", "input_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"--holdout must be in [0, 1), got {self.holdout}")
        if self.holdout_seed is not None and not self.holdout:
            raise ValueError("--holdout-seed chooses the --holdout split: pass --holdout too")
        if self.holdout_unseen and not self.holdout:
            raise ValueError("--holdout-unseen filters the --holdout split: pass --holdout too")
        if self.holdout and self.val_split:
            raise ValueError(f"--holdout and --val-split {self.val_split} both choose the validation set; "
                             "pass --val-split none with --holdout")
        if self.votes and self.loss != "ce":
            raise ValueError("--votes trains on vote shares, and the compact loss needs one target class: "
                             "add --loss ce")
        if (self.mixup or self.cutmix) and self.loss != "ce":
            raise ValueError("--mixup/--cutmix make soft targets: use them with --loss ce")
        if not 0 <= self.distill <= 1:
            raise ValueError(f"--distill is the weight of the distillation term, in [0, 1]; got {self.distill}")
        if self.distill and not self.teachers:
            raise ValueError("--distill needs a teacher: pass --teacher CKPT (a dfer checkpoint)")
        if self.teachers and not self.distill:
            raise ValueError("--teacher is used only with --distill W (the weight of its term, e.g. 0.5)")
        if not self.distill_temperature > 0:
            raise ValueError(f"--distill-temperature must be > 0, got {self.distill_temperature}")
        if not 0 < self.crop_scale <= 1:
            raise ValueError(f"--crop-scale must be in (0, 1], got {self.crop_scale}")
        if self.recipe not in RECIPES:
            raise ValueError(f"--recipe {self.recipe!r}: choose one of {', '.join(RECIPES)}")
        from dfer_cli.data.sampling import check_sampling

        check_sampling(self.sampling, self.frames)
        if not self.data_root:
            raise ValueError("no data: pass --data-root DIR")


def parse_model_opts(pairs, model: str) -> dict:
    """``["dim=256", "depth=2"]`` -> ``{"dim": 256, "depth": 2}``, each value converted to
    the type of that field in the model's default config. Raises ValueError on an unknown
    key or a value of the wrong type."""
    from dfer_cli.models import get_config

    defaults = get_config(model).to_dict()
    out = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise ValueError(f"--model-opt {pair!r}: expected key=value, e.g. dim=256")
        key, raw = (s.strip() for s in pair.split("=", 1))
        if key not in defaults:
            raise ValueError(f"--model-opt {key}: not a field of {model}'s config "
                             f"(fields: {', '.join(sorted(defaults))})")
        out[key] = _convert(raw, defaults[key], key)
    return out


def _convert(raw: str, default, key: str):
    if raw.lower() in ("none", "null"):
        return None
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, (list, tuple)):
            return type(default)(json.loads(raw) if raw.startswith("[") else [type(default[0])(v) for v in raw.split(",")])
        if default is None:
            try:
                return json.loads(raw)
            except json.JSONDecodeError:
                return raw
    except (ValueError, IndexError):
        raise ValueError(f"--model-opt {key}={raw}: expected a {type(default).__name__}") from None
    return raw


def lr_at(step: int, total_steps: int, warmup_steps: int, cfg: TrainConfig) -> float:
    """Learning rate at optimizer step `step` (0-based): linear warmup, then cosine or flat."""
    if warmup_steps and step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


class EpochSampler:
    """Single-process shuffling that depends only on (seed, epoch), like
    DistributedSampler, so a resumed run draws the same order."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


def batch_sizes(n: int, batch_size: int, merge_single: bool) -> list[int]:
    """Sizes of the batches that cover `n` samples once: full batches, then the remainder.

    With `merge_single`, a last batch of exactly one sample joins the one before (BatchNorm
    in train mode cannot normalise a single value per channel, which is what the trunk sees
    for one clip of one frame).
    """
    sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    if merge_single and len(sizes) > 1 and sizes[-1] == 1:
        sizes[-2:] = [sizes[-2] + 1]
    return sizes


def describe_batches(sizes: list[int]) -> str:
    """'1 batch of 32 + 1 of 10', '12 batches of 6'..."""
    parts, i = [], 0
    while i < len(sizes):
        j = i
        while j < len(sizes) and sizes[j] == sizes[i]:
            j += 1
        k = j - i
        parts.append(f"{k} {'batch' if k == 1 else 'batches'} of {sizes[i]}" if not parts else f"{k} of {sizes[i]}")
        i = j
    return " + ".join(parts) if parts else "no batches"


class EpochBatches:
    """Batch sampler: the indices of `sampler` (re-read each epoch) cut into `batch_sizes`,
    so every sample is used every epoch and the order still depends only on (seed, epoch)."""

    def __init__(self, sampler, batch_size: int, merge_single: bool):
        self.sampler, self.batch_size, self.merge_single = sampler, batch_size, merge_single

    def sizes(self) -> list[int]:
        return batch_sizes(len(self.sampler), self.batch_size, self.merge_single)

    def __iter__(self):
        indices = list(self.sampler)
        start = 0
        for size in self.sizes():
            yield indices[start:start + size]
            start += size

    def __len__(self) -> int:
        return len(self.sizes())


class _Reporter:
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


def _dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment, (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _build_optimizer(params, cfg: TrainConfig):
    import torch

    from dfer_cli.optim import SAM

    if cfg.optimizer == "sam":
        return SAM(params, torch.optim.SGD, rho=cfg.rho, lr=cfg.lr, momentum=cfg.momentum,
                   weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    if cfg.optimizer == "sam-adamw":
        return SAM(params, torch.optim.AdamW, rho=cfg.rho, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _build_loss(cfg: TrainConfig, model):
    import torch

    if cfg.loss == "ce":
        return torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    from dfer_cli.losses import CompactLoss

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
                    holdout_sha256=_names_digest(held))
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
    from dfer_cli.data import IMAGE_EXTS
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


def _names_digest(samples: list) -> str:
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


def still_batches(train_ds, cfg: TrainConfig, order, sizes: list[int]):
    """A :class:`~dfer_cli.data.stills.StillBatches` over ``train_ds``'s images when it holds
    only still images and clips are one frame; None otherwise (clips use the DataLoader)."""
    if cfg.frames != 1 or any(s.kind != "image" for s in train_ds.samples):
        return None
    from dfer_cli.data.stills import StillAugment, StillBatches, images_to_tensor

    aug = StillAugment(rotate=cfg.rotate, scale=cfg.zoom, shift=cfg.shift, flip=cfg.flip,
                       erase=cfg.erase, mixup=cfg.mixup, cutmix=cfg.cutmix)
    images = images_to_tensor([train_ds.load(i, None)[0][0] for i in range(len(train_ds))], cfg.input_size)
    return StillBatches(images, train_ds.targets(), cfg.preprocessing(), aug, seed=cfg.seed, order=order,
                        sizes=sizes, num_classes=len(CLASSES))


@dataclass
class _Run:
    """Everything one training run holds while its epochs run (built by :func:`train`)."""
    cfg: TrainConfig
    device: object                 # torch.device
    rank: int
    world: int                     # processes (torchrun); 1 for a single process
    rep: _Reporter
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
    rank, world, device = _setup_processes(cfg)
    rep = _Reporter(progress and rank == 0, cfg.log_every, rich_bar)

    torch.manual_seed(cfg.seed)  # before the model is built: its initial weights follow the seed
    train_ds, val_ds, data_prov = load_datasets(cfg, rep.log)
    model = _build_model(cfg, resume, device, rep, warn=rank == 0)
    run = _build_run(cfg, model, train_ds, device, rank, world, rep)
    state_path = os.path.join(cfg.output, "state.pt")
    if resume:
        _check_same_teachers(run)
        run.counters = load_state(state_path, model, run.optimizer, device)
        rep.log(f"resuming {cfg.output} after epoch {run.counters.epoch}")
    if run.distributed:
        run.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler, batches = _make_loader(run, train_ds)

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


def _check_same_teachers(run: _Run) -> None:
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
        saved.model_opts = {**{k: v for k, v in built.items() if k not in _PER_RUN_SIZES}, **saved.model_opts}
    return saved


_PER_RUN_SIZES = ("num_frames", "input_size", "num_classes", "backbone_weights")


def _setup_processes(cfg: TrainConfig):
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


def _build_model(cfg: TrainConfig, resume: bool, device, rep: _Reporter, warn: bool):
    """The model to train, on ``device``: from ``--init`` (partial load) or fresh, trunk frozen
    and channels-last as asked. Under ``--init`` the sizes follow that checkpoint unless
    ``--model-opt`` overrides them (frames and input size always come from ``cfg``)."""
    import torch

    from dfer_cli import checkpoint as ckpt
    from dfer_cli.models import create_model

    opts, init_state = dict(cfg.model_opts), None
    if cfg.init and not resume:
        init_state, init_meta = ckpt.read_checkpoint(cfg.init)
        if init_meta["model"] == "ensemble":
            raise ValueError(f"--init {cfg.init}: an ensemble of {len(init_meta['config']['members'])} models, "
                             "and a run trains one; start from one member: `dfer weights export "
                             f"{cfg.init} member.safetensors --member 1 --float32`, then --init member.safetensors")
        inherited = {k: v for k, v in init_meta.get("config", {}).items() if k not in _PER_RUN_SIZES}
        opts = cfg.model_opts = {**inherited, **opts}
    model = create_model(cfg.model, num_frames=cfg.frames, input_size=cfg.input_size,
                         num_classes=len(CLASSES), **opts)
    if not resume and not cfg.init and not opts.get("backbone_weights") and warn:
        print(RANDOM_TRUNK_WARNING, file=sys.stderr, flush=True)  # once, even with --quiet
    if init_state is not None:
        loaded, skipped = ckpt.load_state_partial(model, init_state)
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


def _build_run(cfg: TrainConfig, model, train_ds, device, rank: int, world: int, rep: _Reporter) -> _Run:
    """Optimizer, loss, precision and logit adjustment around ``model``."""
    import torch

    precision = resolve_precision(cfg.precision, device)
    params = [p for p in model.parameters() if p.requires_grad]
    run = _Run(cfg=cfg, device=device, rank=rank, world=world, rep=rep, model=model, net=model, params=params,
               optimizer=_build_optimizer(params, cfg), criterion=_build_loss(cfg, model), loader=None,
               counters=TrainState(), precision=precision,
               autocast_dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
    if precision == "fp16":
        if cfg.optimizer in SAM_OPTIMIZERS:
            raise ValueError(f"--precision fp16 with --optimizer {cfg.optimizer} is not supported (SAM's two steps "
                             "and a GradScaler do not mix); use --precision bf16")
        run.scaler = torch.amp.GradScaler("cuda")
    if cfg.logit_adjust:
        from dfer_cli.losses import logit_adjustment
        run.log_prior = logit_adjustment(class_counts_of(train_ds), cfg.logit_adjust).to(device)
    if cfg.teachers:
        from dfer_cli.distill import Teachers, describe_teachers

        run.teachers = Teachers(cfg.teachers, list(CLASSES), cfg.preprocessing(), cfg.frames, device=device,
                                sampling=cfg.sampling, recipe=cfg.to_dict())
        rep.log(describe_teachers(run.teachers.records))
        if rank == 0:
            for warning in run.teachers.warnings:
                print(f"dfer: warning: {warning}", file=sys.stderr, flush=True)
    return run


def _make_loader(run: _Run, train_ds):
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


def train_one_epoch(run: _Run, epoch: int) -> dict:
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


def training_step(run: _Run, x, y):
    """Forward, backward and one optimizer update on a batch; returns (loss, logits (B, C)).

    Under SAM the loss is evaluated twice: at the weights, then at the perturbed weights
    ``w + rho * g / ||g||`` whose gradient makes the update; BatchNorm running statistics
    count the first pass only (optim.py).
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
            from dfer_cli.losses import distillation_loss

            # raw logits against the teachers' raw logits: the same posterior when both were
            # trained with the same --logit-adjust (Teachers warns otherwise)
            kd = distillation_loss(logits.float(), soft, cfg.distill_temperature)
            loss = (1 - cfg.distill) * loss + cfg.distill * kd
        return loss, logits

    loss, logits = forward_loss()
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.optimizer)
    else:
        loss.backward()
    if cfg.clip_grad:
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
    if cfg.optimizer in SAM_OPTIMIZERS:
        # a mixup/cutmix batch is mixed once, before this step: both passes see the same x, y
        from dfer_cli.optim import frozen_bn_stats

        run.optimizer.first_step(zero_grad=True)
        with frozen_bn_stats(run.model):
            loss2 = forward_loss()[0]
        loss2.backward()
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        run.optimizer.second_step(zero_grad=True)
    elif run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    return loss, logits


def validate(run: _Run, val_ds, row: dict):
    """Score the model on ``val_ds`` (each process its share, confusion matrices summed);
    adds val_war / val_uar / val_recall / val_time to ``row`` and returns the Scores."""
    import torch
    import torch.distributed as dist

    from dfer_cli.evaluate import predict_dataset, score
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


def _finish_epoch(run: _Run, epoch: int, row: dict, data_prov: dict, argv, validated: bool,
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
