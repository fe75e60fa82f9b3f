"""Training configuration: `TrainConfig` (every option with its default), the recipes (dfer's
defaults and the papers' stated values) and `--model-opt KEY=VALUE` parsing.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from dfer_cli.preprocess import DEFAULT_TEMPLATE, Preprocessing, zoom_template

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
    lam: float | None = None           # compact loss weight (None: dfer_cli.train.losses default)
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
        from dfer_cli.video.sampling import check_sampling

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
