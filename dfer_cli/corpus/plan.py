"""What a corpus run has to do: each input's key (its resolved path), its result file's name,
its shard, and which inputs are already done with this model and these settings.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from dfer_cli.corpus.store import RESULT_SUFFIX, read_manifests


def input_key(path: str) -> str:
    """The identity of an input: its absolute path with symlinks resolved (the same file
    named two ways is one video; shards and result names derive from this)."""
    return os.path.realpath(os.path.expanduser(path))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def result_name(key: str, fmt: str) -> str:
    """File name (inside OUT) of the result for the input whose `input_key` is `key`:
    ``<stem>-<first 12 hex of sha256(key)><.jsonl|.json|.csv>``. The stem keeps the name
    readable (characters other than letters, digits, ``._-+`` become ``_``; at most 80)."""
    stem = re.sub(r"[^\w.+-]", "_", Path(key).stem)[:80] or "video"
    return f"{stem}-{_digest(key).hex()[:12]}{RESULT_SUFFIX[fmt]}"


def parse_shard(spec: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N), K counted from 1 (1 <= K <= N), as SLURM's ``--array=1-N``
    numbers its tasks. Raises ValueError with a one-line message naming the fix."""
    m = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", spec or "")
    if not m:
        raise ValueError(f"--shard {spec}: expected K/N, e.g. --shard 1/4 (K counts from 1 to N)")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        raise ValueError(f"--shard {spec}: N must be at least 1")
    if not 1 <= k <= n:
        hint = f"; for 0-based task ids use $((ID+1))/{n}" if k == 0 else ""
        raise ValueError(f"--shard {spec}: K counts from 1, so it must be between 1 and {n}{hint}")
    return k, n


def shard_of(key: str, n: int) -> int:
    """The shard (1..n) an input belongs to: a hash of its resolved path, so the split does
    not depend on the order or number of the other inputs."""
    return int.from_bytes(_digest(key)[:8], "big") % n + 1


@dataclass
class Job:
    """One input of a corpus run."""
    path: str                   # as given (what the records' "video" field says)
    key: str                    # input_key(path)
    result: str                 # result file name inside OUT
    error: Optional[str] = None  # why it cannot be processed at all (missing, ...), before any work
    size: Optional[int] = None
    mtime_ns: Optional[int] = None


@dataclass
class Plan:
    todo: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)     # already done with this model and settings
    other_shards: int = 0                                # inputs left to the other shards
    keys: set = field(default_factory=set)               # every distinct input, all shards


def corpus_done(out_dir, keys: set, model_sha256: str, settings: dict) -> int:
    """How many of the inputs `keys` some manifest in OUT (any shard's) has as done with this
    model and these settings: the progress of the whole corpus when shards share OUT."""
    sig = json.dumps(settings, sort_keys=True)
    return len({r.get("key") for r in read_manifests(out_dir)
                if r.get("status") not in (None, "failed") and r.get("model_sha256") == model_sha256
                and json.dumps(r.get("settings"), sort_keys=True) == sig} & keys)


def plan_corpus(items: Sequence[tuple[str, Optional[str]]], out_dir, fmt: str, model_sha256: str,
                settings: dict, *, shard: Optional[tuple[int, int]] = None, force: bool = False) -> Plan:
    """Split `items` ((path, error) pairs from `video.inputs.collect_inputs`) into what this
    run must do and what OUT already has. Inputs resolving to the same file count once."""
    done: dict[tuple, set] = {}
    if not force:
        for rec in read_manifests(out_dir):
            if rec.get("status") not in (None, "failed") and rec.get("result"):
                sig = (rec.get("key"), rec.get("size"), rec.get("mtime_ns"), rec.get("model_sha256"),
                       json.dumps(rec.get("settings"), sort_keys=True))
                done.setdefault(sig, set()).add(rec["result"])
    plan, seen = Plan(), set()
    settings_sig = json.dumps(settings, sort_keys=True)
    for path, error in items:
        key = input_key(path)
        if key in seen:
            continue
        seen.add(key)
        plan.keys.add(key)
        if shard is not None and shard_of(key, shard[1]) != shard[0]:
            plan.other_shards += 1
            continue
        job = Job(path=path, key=key, result=result_name(key, fmt), error=error)
        if error is None:
            try:
                st = os.stat(key)
                job.size, job.mtime_ns = st.st_size, st.st_mtime_ns
            except OSError as e:
                job.error = e.strerror or str(e)
        sig = (key, job.size, job.mtime_ns, model_sha256, settings_sig)
        if job.error is None and job.result in done.get(sig, ()) and (Path(out_dir) / job.result).is_file():
            plan.skipped.append(job)
        else:
            plan.todo.append(job)
    return plan


def detector_options(*, min_face=None, detect_size=None, min_score=None, detection=None) -> dict:
    """The face-detector keyword arguments of `predict_video` that were given (None: its
    default). `dfer predict` and corpus runs both build them here."""
    return {name: value for name, value in (("min_face", min_face), ("detect_size", detect_size),
                                            ("min_score", min_score), ("detection", detection))
            if value is not None}


def predict_options(*, window=2.0, stride=1.0, all_faces=False, batch_size=8, tta="none",
                    min_face=None, detect_size=None, min_score=None, detection=None) -> dict:
    """Keyword arguments for `predict_video` (detector options only when given)."""
    return dict(window=window, stride=stride, all_faces=all_faces, batch_size=batch_size, tta=tta,
                **detector_options(min_face=min_face, detect_size=detect_size, min_score=min_score,
                                   detection=detection))


def result_settings(opts: dict, fmt: str) -> dict:
    """What, besides the model and the input, decides a result file's content (recorded in the
    manifest; a change makes the video be redone). The batch size and device do not."""
    from dfer_cli.faces import detect as faces

    return {"window": float(opts["window"]), "stride": float(opts["stride"]), "all_faces": bool(opts["all_faces"]),
            "min_face": float(opts.get("min_face", faces.MIN_FACE)),
            "detect_size": opts.get("detect_size", faces.DETECT_SIZE),
            "min_score": float(opts.get("min_score", faces.MIN_SCORE)), "tta": opts["tta"], "format": fmt,
            # only when not "full", so that folders made before the option keep their results;
            # predict_video's default for dfer's MTCNN is "keyframe"
            **({"detection": opts.get("detection") or "keyframe"}
               if (opts.get("detection") or "keyframe") != "full" else {})}
