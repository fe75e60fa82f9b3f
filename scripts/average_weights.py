"""Average the weights of checkpoints of one model (uniform weight averaging, a "model soup").

    python scripts/average_weights.py OUT.safetensors A.safetensors B.safetensors [...]

Every input must be a dfer checkpoint of the same model and config (typically stages of one
run, each started from the previous one, so that they lie in one basin of the loss and their
average is a model too). Floating-point tensors, BatchNorm running statistics included, are
averaged in float64; integer buffers are taken from the first file. The output keeps the
first checkpoint's classes, preprocessing and provenance (so `scripts/prior_shift.py` finds
its run's held-out split) and records the inputs under provenance["averaged_from"].
"""
from __future__ import annotations

import argparse


def average(paths: list[str]):
    """The model of the first checkpoint with the mean of all checkpoints' tensors."""

    from dfer_cli.checkpoint import load_model

    models = [load_model(p) for p in paths]
    first = models[0]
    for p, m in zip(paths[1:], models[1:]):
        if m.model_name != first.model_name or m.config != first.config or list(m.classes) != list(first.classes):
            raise SystemExit(f"{p}: not the same model, config and classes as {paths[0]}; "
                             "average checkpoints of one run only")
    states = [m.state_dict() for m in models]
    mean = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            mean[k] = (sum(s[k].double() for s in states) / len(states)).to(v.dtype)
        else:
            mean[k] = v.clone()
    first.load_state_dict(mean)
    return first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("output")
    p.add_argument("checkpoints", nargs="+")
    args = p.parse_args()
    if len(args.checkpoints) < 2:
        raise SystemExit("give at least two checkpoints to average")

    from dfer_cli.checkpoint import save_checkpoint

    model = average(args.checkpoints)
    provenance = dict(model.provenance, averaged_from=list(args.checkpoints))
    save_checkpoint(args.output, model, classes=model.classes, preprocessing=model.preprocessing,
                    provenance=provenance, sampling=model.sampling)
    print(f"{args.output}: mean of {len(args.checkpoints)} checkpoints")


if __name__ == "__main__":
    main()
