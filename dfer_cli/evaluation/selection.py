"""Which checkpoint of a run is scored, and whether it was selected on the very split it is
scored on (the evaluation then says so).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CheckpointChoice:
    """The checkpoint an evaluation scores: ``path``; ``which`` ("best", "last", or None for
    a file that is not a run checkpoint); its ``epoch`` of ``epochs``; for a best,
    ``selected_on`` (the selection record, train.selection_record); ``requested`` (the path
    asked for) and a one-line ``note`` when another checkpoint was scored instead."""

    path: str
    requested: str
    which: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    best_epoch: int | None = None
    selected_on: dict | None = None
    note: str | None = None
    members: "list[CheckpointChoice] | None" = None   # of an ensemble: each member's own record
    averaged_from: list[str] | None = None   # of a weight average (scripts/average_weights.py): its inputs

    def describe(self) -> str:
        """'last (epoch 100 of 100)', 'best (epoch 37 of 100, selected on holdout 0.1 of
        dfew train fold 1)', 'ensemble of 2 members: 1) ...; 2) ...', or 'checkpoint (no
        training epoch recorded)' for files without one."""
        if self.members is not None:
            parts = "; ".join(f"{i}) {m.describe()}" for i, m in enumerate(self.members, 1))
            return f"ensemble of {len(self.members)} members: {parts}"
        if self.averaged_from is not None:
            return f"weight average of {len(self.averaged_from)} checkpoints ({', '.join(self.averaged_from)})"
        if self.epoch is None:
            return f"{self.which or 'checkpoint'} (no training epoch recorded)"
        of = f" of {self.epochs}" if self.epochs else ""
        text = f"{self.which or 'checkpoint'} (epoch {self.epoch}{of}"
        if self.which == "best":
            text += f", selected on {describe_selection(self.selected_on)}"
            if self.epochs and self.epoch >= self.epochs:
                text += "; it is also the last epoch"
        elif self.which == "last" and self.best_epoch and self.best_epoch != self.epoch:
            text += f"; the run's best was epoch {self.best_epoch}"
        return text + ")"

    def to_dict(self) -> dict:
        return {"path": self.path, "requested": self.requested, "which": self.which, "epoch": self.epoch,
                "epochs": self.epochs, "best_epoch": self.best_epoch, "selected_on": self.selected_on,
                "substituted": self.path != self.requested, "description": self.describe(),
                **({"members": [m.to_dict() for m in self.members]} if self.members is not None else {}),
                **({"averaged_from": list(self.averaged_from)} if self.averaged_from is not None else {})}


def describe_selection(sel: dict | None) -> str:
    """'dfew test fold 1', 'holdout 0.1 of folder train (/data/x)', 'an unrecorded split'."""
    if not sel:
        return "an unrecorded split"
    where = f"{sel.get('dataset')} {sel.get('split')}" + (f" fold {sel['fold']}" if sel.get("fold") else "")
    if sel.get("dataset") == "folder" and sel.get("root"):
        where += f" ({sel['root']})"
    return f"holdout {sel['holdout']:g} of {where}" if sel.get("holdout") else where


def _selection_from_provenance(prov: dict) -> dict | None:
    """The selection record of a ``best`` checkpoint; for one written before dfer recorded
    it, rebuilt from the run's data provenance (``val_split`` 'holdout F of SPLIT ...' or a
    split name)."""
    from dfer_cli.data import canonical_split

    if isinstance(prov.get("selected_on"), dict):
        return prov["selected_on"]
    data = prov.get("data") or {}
    val = data.get("val_split")
    if not isinstance(val, str) or not val:
        return None
    dataset = data.get("dataset")
    if val.startswith("holdout "):
        try:
            frac = float(val.split()[1])
        except (IndexError, ValueError):
            frac = None
        return {"metric": "val_uar", "dataset": dataset, "split": canonical_split(dataset, data.get("split")),
                "fold": data.get("fold"), "holdout": frac or 1.0, "root": data.get("root")}
    return {"metric": "val_uar", "dataset": dataset, "split": canonical_split(dataset, val), "fold": data.get("fold"),
            "holdout": None, "root": data.get("root")}


def selected_on_split(sel: dict | None, dataset: str, data_root: str, split: str, fold: int | None) -> bool:
    """Whether a ``best`` checkpoint selected as ``sel`` says was chosen on the split being
    scored: same dataset, same split (canonical names, e.g. DFEW 'val' is 'test'), same DFEW
    fold, and for a folder layout the same root folder. Selection on a holdout of the
    training split never is; an unknown selection (None) is not counted as one."""
    import os

    from dfer_cli.data import canonical_split

    if not sel or sel.get("holdout"):
        return False
    if sel.get("dataset") != dataset or sel.get("split") != canonical_split(dataset, split):
        return False
    if dataset == "dfew" and sel.get("fold") != fold:
        return False
    if dataset == "folder":
        root = sel.get("root")
        return bool(root) and os.path.realpath(root) == os.path.realpath(data_root)
    return True


def _read_choice(path: str, requested: str) -> CheckpointChoice:
    """What a checkpoint's provenance says about itself (best/last, epoch, selection)."""
    from dfer_cli.checkpoint import read_metadata

    prov = read_metadata(path).get("provenance") or {}
    records = prov.get("members")
    if isinstance(records, list) and records:
        # an ensemble (`dfer weights ensemble`): its top-level record is its first member's, so
        # each member is described from its own record and the file as a whole is neither a
        # run's best nor its last (never substituted)
        records = [r if isinstance(r, dict) else {} for r in records]
        members = [_choice_from_provenance(str(r.get("file") or f"member {i}"), str(r.get("file") or ""),
                                           r.get("provenance") or {}) for i, r in enumerate(records, 1)]
        return CheckpointChoice(path=path, requested=requested, members=members)
    return _choice_from_provenance(path, requested, prov)


def _choice_from_provenance(path: str, requested: str, prov: dict) -> CheckpointChoice:
    """A CheckpointChoice from one model's provenance record."""
    import os

    averaged = prov.get("averaged_from")
    if isinstance(averaged, list) and averaged:
        # its other fields are its first input's: the average is neither a best nor a last
        return CheckpointChoice(path=path, requested=requested, averaged_from=[str(a) for a in averaged])
    which = prov.get("checkpoint")
    if which not in ("best", "last"):
        # written before dfer recorded it: the file name (or the name it was exported from)
        name = (prov.get("exported_from") or {}).get("file") or os.path.basename(path)
        stem = os.path.splitext(os.path.basename(str(name)))[0]
        which = stem if stem in ("best", "last") and "epoch" in prov else None
    epoch = prov.get("epoch") if type(prov.get("epoch")) is int else None
    epochs = (prov.get("recipe") or {}).get("epochs")
    best_epoch = prov.get("best_epoch") if type(prov.get("best_epoch")) is int else None
    return CheckpointChoice(path=path, requested=requested, which=which, epoch=epoch,
                            epochs=epochs if type(epochs) is int else None, best_epoch=best_epoch,
                            selected_on=_selection_from_provenance(prov) if which == "best" else None)


def choose_checkpoint(weights: str, dataset: str, data_root: str, split: str, fold: int | None = None) -> CheckpointChoice:
    """The checkpoint to score for ``weights`` (a path or a weights name) on a split.

    A run's ``best`` checkpoint selected on the split being scored (e.g. a DFEW fold trained
    with the test fold as validation) is replaced by the ``last.safetensors`` next to it,
    with a one-line ``note``; when there is none, ValueError naming the fix. A best whose
    epoch is the run's last epoch is the last checkpoint already and is kept. An ensemble
    (`dfer weights ensemble`) is described member by member and always scored as it is, with
    a ``note`` naming any member that is a best selected on the split being scored."""
    import os

    from dfer_cli.checkpoint import CheckpointError
    from dfer_cli.weights import find_weights

    try:
        path = str(find_weights(weights))
    except FileNotFoundError as e:
        raise CheckpointError(str(e)) from None

    def chosen_here(c: CheckpointChoice) -> bool:
        # a best selected on the split being scored, and not simply the run's last epoch
        return (c.which == "best" and selected_on_split(c.selected_on, dataset, data_root, split, fold)
                and not (c.epochs and c.epoch is not None and c.epoch >= c.epochs))

    choice = _read_choice(path, path)
    if choice.members is not None:
        # an ensemble cannot be swapped for a last checkpoint: say which members were chosen here
        here = [(i, m) for i, m in enumerate(choice.members, 1) if chosen_here(m)]
        if here:
            named = ", ".join(f"member {i} ({m.path}, epoch {m.epoch})" for i, m in here)
            choice.note = (f"{path}: {named} {'was' if len(here) == 1 else 'were'} selected on "
                           f"{describe_selection(here[0][1].selected_on)}, the split being scored, so this "
                           "score overstates unseen data; rebuild the ensemble from the runs' last checkpoints")
        return choice
    if not chosen_here(choice):
        return choice
    where = describe_selection(choice.selected_on)
    last = os.path.join(os.path.dirname(path), "last.safetensors")
    if not os.path.isfile(last):
        raise ValueError(f"{path} was selected on {where}, the split being scored, and there is no last.safetensors "
                         "next to it: score the run's last checkpoint, or retrain with --holdout 0.1 to select on "
                         "held-out training data")
    chosen = _read_choice(last, path)
    chosen.note = (f"{path} was selected (epoch {choice.epoch}) on {where}, the split being scored; "
                   f"scoring {last} instead")
    return chosen
