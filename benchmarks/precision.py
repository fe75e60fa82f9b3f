"""Training throughput and loss curves, fp32 against bf16 autocast (+ channels_last trunk).

    python benchmarks/precision.py                       # starter-model sizes, 2 threads
    python benchmarks/precision.py --size 48 --stem s1 --steps 6 --batch 64 --threads 1

Trains the same model from the same initial weights on the same fixed batches (FER2013-like
48 px grey noise with a class-dependent brightness, so the loss has something to fall on)
once per precision, and prints images/s (the first step, warm-up, excluded) and the loss of
every step side by side. bf16 pays off only on CPUs with native bf16 arithmetic
(AVX512-BF16 or AMX); elsewhere PyTorch emulates it and it is much slower.
"""
from __future__ import annotations

import argparse
import platform
import time


def run(precision: str, args, batches, init_state):
    import torch

    from dfer_cli.models import create_model

    model = create_model("logo_former", num_frames=1, input_size=args.size, dim=256, depth=2, heads=4,
                         window=tuple(args.window), stem=args.stem)
    model.load_state_dict(init_state)
    model.train()
    if precision == "bf16":
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
    results = {prec: run(prec, args, batches, init) for prec in ("fp32", "bf16")}
    for prec, (rate, _) in results.items():
        print(f"{prec}: {rate:.1f} images/s")
    print(f"bf16 / fp32 throughput: {results['bf16'][0] / results['fp32'][0]:.2f}x")
    print("step  loss fp32  loss bf16")
    for i, (a, b) in enumerate(zip(results["fp32"][1], results["bf16"][1]), 1):
        print(f"{i:4d}  {a:9.4f}  {b:9.4f}")


if __name__ == "__main__":
    main()
