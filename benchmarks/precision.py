"""Training throughput and loss curves: fp32 with a contiguous trunk, fp32 with a
channels_last trunk (what `dfer train` does on the CPU) and bf16 autocast (+ channels_last).

    python benchmarks/precision.py                       # starter-model sizes, 2 threads
    python benchmarks/precision.py --size 48 --stem s1 --steps 6 --batch 64 --threads 1
    python benchmarks/precision.py --size 96 --batch 128 --modes fp32 fp32+channels_last

Trains the same model from the same initial weights on the same fixed batches (FER2013-like
48 px grey noise with a class-dependent brightness, so the loss has something to fall on)
once per mode, and prints images/s (the first step, warm-up, excluded) and the loss of
every step side by side. bf16 pays off only on CPUs with native bf16 arithmetic
(AVX512-BF16 or AMX); elsewhere PyTorch emulates it and it is much slower. channels_last
alone pays off on any x86 CPU where oneDNN runs the convolutions in NHWC.
"""
from __future__ import annotations

import argparse
import platform
import time

MODES = ("fp32", "fp32+channels_last", "bf16")


def run(mode: str, args, batches, init_state):
    import torch

    from dfer_cli.models import create_model

    model = create_model("logo_former", num_frames=1, input_size=args.size, dim=256, depth=2, heads=4,
                         window=tuple(args.window), stem=args.stem)
    model.load_state_dict(init_state)
    model.train()
    precision = mode.split("+")[0]
    if mode != "fp32":
        model.backbone.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    losses, times = [], []
    for x, y in batches:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    rate = args.batch * (len(times) - 1) / sum(times[1:])
    return rate, losses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--stem", default="standard")
    p.add_argument("--window", type=int, nargs=3, default=(2, 2, 2))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                   help="what to compare (the first is the reference of the speed ratios)")
    args = p.parse_args()

    import torch

    from dfer_cli.models import create_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = []
    for _ in range(args.steps):
        y = torch.randint(0, 7, (args.batch,))
        x = torch.randn(args.batch, 1, 1, args.size, args.size) * 0.5 + (y.float() / 3 - 1).view(-1, 1, 1, 1, 1)
        batches.append((x.expand(-1, -1, 3, -1, -1).contiguous(), y))
    init = create_model("logo_former", num_frames=1, input_size=args.size, dim=256, depth=2, heads=4,
                        window=tuple(args.window), stem=args.stem).state_dict()
    flags = [f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2")
             if f in open("/proc/cpuinfo").read()] if platform.system() == "Linux" else []
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"cpu flags: {' '.join(flags) or 'unknown'}")
    print(f"model: logo_former dim 256 depth 2, {args.size} px, stem {args.stem}, batch {args.batch}, "
          f"{args.steps} steps")
    results = {mode: run(mode, args, batches, init) for mode in args.modes}
    ref = args.modes[0]
    for mode, (rate, _) in results.items():
        print(f"{mode}: {rate:.1f} images/s ({rate / results[ref][0]:.2f}x {ref})")
    print("step  " + "  ".join(f"{m:>18}" for m in args.modes))
    for i, row in enumerate(zip(*(results[m][1] for m in args.modes)), 1):
        print(f"{i:4d}  " + "  ".join(f"{v:18.4f}" for v in row))


if __name__ == "__main__":
    main()
