"""Label distributions: per-sample votes of several raters, read from a CSV.

Two layouts are read, told apart by the header:

- **FER+** (Barsoum et al. 2016), as in ``fer2013/ferplus/{train,val}.csv``: a ``file``
  column, the ten FER+ vote columns ``neutral, happiness, surprise, sadness, anger,
  disgust, fear, contempt, unknown, NF`` and an optional ``status`` (rows that are not
  ``ok`` carry no votes).
- **generic**: a ``file`` column and one column per dfer class name (``happy, sad, neutral,
  angry, surprise, disgust, fear``; FER+'s spellings are accepted too), holding vote counts
  or probabilities -- the shape any multi-rater annotation takes. Other columns are ignored.

What happens to votes outside dfer's seven classes (FER+'s ``contempt``, ``unknown`` and
``NF``, "not a face"): they are dropped and the seven counts renormalised, so an image's
target is the share of the raters *who named one of the seven* that named each class. An
image whose most-voted column is ``NF`` (the crowd says it is not a face) is left out, as
is a row with no vote in the seven (all contempt/unknown) and a row without votes (FER+'s
unmatched images). Every left-out file is counted by reason in a :class:`DataReport`.

``file`` is a path relative to the dataset root (FER+'s ``train/happy/x.jpg`` under the
``fer2013`` folder) or to the split folder (``happy/x.jpg``); both are tried.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field

import numpy as np

from dfer_cli.labels import ALIASES, CLASSES

FERPLUS_EXTRA = ("contempt", "unknown", "NF")
NOT_A_FACE = "NF"


@dataclass
class VoteTable:
    """Vote counts (or probabilities) over dfer's classes, keyed by normalised file path."""

    path: str
    layout: str                                            # "ferplus" | "generic"
    votes: dict[str, np.ndarray] = field(default_factory=dict)   # key -> (7,) float, sum > 0
    dropped: dict[str, str] = field(default_factory=dict)        # key -> why it has no votes
    other: dict[str, float] = field(default_factory=dict)        # key -> top count outside the 7 (FER+)

    def key_of(self, sample_path: str, root: str, split_dir: str | None = None) -> str | None:
        """The row of a sample file: its path relative to ``root``, else to ``split_dir``;
        None when the table has neither."""
        for base in (root, split_dir):
            if base:
                k = _key(os.path.relpath(sample_path, base))
                if k in self.votes or k in self.dropped:
                    return k
        return None

    def lookup(self, sample_path: str, root: str, split_dir: str | None = None):
        """(votes (7,) or None, reason or None) for a sample file under ``root``."""
        k = self.key_of(sample_path, root, split_dir)
        if k is None:
            return None, "no row in the vote CSV"
        return (self.votes[k], None) if k in self.votes else (None, self.dropped[k])


def _key(rel: str) -> str:
    return os.path.normpath(rel).replace(os.sep, "/") if rel else ""


def read_votes(path: str | os.PathLike) -> VoteTable:
    """Parse a vote CSV (FER+ or generic layout, see the module docstring). Raises ValueError
    with one line naming the file for a missing file, a header without ``file`` and class
    columns, or a negative / non-numeric vote."""
    path = str(path)
    if not os.path.isfile(path):
        raise ValueError(f"--votes {path}: no such file; give a CSV with a 'file' column and one column per class")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "file" not in header:
            raise ValueError(f"{path}: no 'file' column in the header; a vote CSV has 'file' and one column per "
                             f"class ({', '.join(CLASSES)})")
        columns = _class_columns(header)
        missing = [c for c in CLASSES if c not in columns.values()]
        if missing:
            raise ValueError(f"{path}: no column for {', '.join(missing)}; a vote CSV needs one column per class "
                             f"({', '.join(CLASSES)}, or FER+'s names)")
        layout = "ferplus" if NOT_A_FACE in header or "happiness" in columns else "generic"
        extra = [h for h in FERPLUS_EXTRA if h in header]
        table = VoteTable(path=path, layout=layout)
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            key = _key(row.get("file", ""))
            if not key:
                raise ValueError(f"{path} line {line}: empty 'file'")
            status = row.get("status", "ok") or "ok"
            cells = [row.get(col, "") for col in columns]
            if status != "ok" or all(c == "" for c in cells):
                table.dropped[key] = f"no votes (status {status})" if status != "ok" else "no votes"
                continue
            counts = np.zeros(len(CLASSES), dtype=np.float64)
            for col, name in columns.items():
                counts[CLASSES.index(name)] += _number(row.get(col, ""), path, line, col)
            others = {h: _number(row.get(h, ""), path, line, h) for h in extra}
            if others.get(NOT_A_FACE, 0) > 0 and others[NOT_A_FACE] >= max(counts.max(), *others.values()):
                table.dropped[key] = "the raters call it not a face (NF holds the most votes)"
                continue
            if counts.sum() <= 0:
                table.dropped[key] = "no vote in dfer's 7 classes (contempt/unknown only)"
                continue
            table.votes[key] = counts
            if others:
                table.other[key] = max(others.values())
    return table


def read_vote_tables(paths) -> VoteTable:
    """Several vote CSVs (e.g. FER+'s train.csv and val.csv) read as one table; a file
    named in two of them takes the later one's votes."""
    paths = list(paths)
    merged = read_votes(paths[0])
    for p in paths[1:]:
        t = read_votes(p)
        for k in t.votes:
            merged.dropped.pop(k, None)
        for k in t.dropped:
            merged.votes.pop(k, None)
        for k in (*t.votes, *t.dropped):
            merged.other.pop(k, None)
        merged.votes.update(t.votes)
        merged.other.update(t.other)
        merged.dropped.update(t.dropped)
        merged.path = f"{merged.path}, {p}"
        merged.layout = merged.layout if merged.layout == t.layout else "mixed"
    return merged


def _class_columns(header: list[str]) -> dict[str, str]:
    """Header columns that name a dfer class -> that class (FER+'s and dfer's spellings)."""
    out = {}
    for h in header:
        name = ALIASES.get(h.lower())
        if name is not None and h not in FERPLUS_EXTRA:
            out[h] = name
    return out


def _number(cell: str, path: str, line: int, col: str) -> float:
    if cell == "":
        return 0.0
    try:
        v = float(cell)
    except ValueError:
        raise ValueError(f"{path} line {line}: {col} = {cell!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{path} line {line}: {col} = {cell!r}; votes must be finite and >= 0")
    return v


def attach_votes(samples: list, table: VoteTable, root: str, split: str | None, report,
                 relabel: bool = True) -> list:
    """The samples that have votes in ``table``, each with ``votes`` set and (``relabel``)
    ``label`` set to the plurality class (the first in dfer's order on a tie); the others
    are added to ``report`` with the reason and left out."""
    split_dir = os.path.join(root, split) if split else None
    kept = []
    for s in samples:
        v, why = table.lookup(s.path, root, split_dir)
        if v is None:
            report.add(f"no usable votes ({why})", s.path)
            continue
        s.votes = tuple(float(x) for x in v)
        if relabel:
            s.label = int(np.argmax(v))
        kept.append(s)
    return kept
