"""Parameters, GMACs and CPU throughput of the model zoo.

    /usr/bin/python3 -m carevision.profile [--arch care_s0 ...] [--task classification]
        [--input-size 224 224] [--batch-sizes 1 8 16] [--threads N] [--seconds 3]

Throughput is measured for the eager model and for the exported graph as the server
runs it (rewritten for inference as export does, scripted, frozen, then
torch.jit.optimize_for_inference), on the same random
batch, after warm-up. Prints a Markdown table.
"""
import argparse
import os
import platform
import sys
import time

import torch

from . import TASKS, create_model, list_backbones
from .export import inference_copy, script_and_freeze
from .flops import count_macs, count_params


def images_per_second(fn, x: torch.Tensor, seconds: float, warmup: int = 2) -> float:
    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        runs, start = 0, time.perf_counter()
        while True:
            fn(x)
            runs += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds and runs >= 3:
                return runs * x.shape[0] / elapsed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m carevision.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=list_backbones(), choices=list_backbones())
    p.add_argument("--task", default="classification", choices=TASKS)
    p.add_argument("--input-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    p.add_argument("--batch-sizes", type=int, nargs="+", default=(1, 8, 16))
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads")
    p.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    p.add_argument("--no-speed", action="store_true", help="only parameters and GMACs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    h, w = args.input_size

    cols = ["model", "params (M)", f"GMACs @{h}x{w}"]
    if not args.no_speed:
        for b in args.batch_sizes:
            cols += [f"eager b{b}", f"TorchScript b{b}"]
    print(f"<!-- torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"task {args.task}, images/s -->")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for arch in args.arch:
        model = create_model(arch, args.task)
        row = [arch, f"{count_params(model) / 1e6:.2f}", f"{count_macs(model, h, w) / 1e9:.3f}"]
        if not args.no_speed:
            graph = torch.jit.optimize_for_inference(script_and_freeze(inference_copy(model)[0]))
            for b in args.batch_sizes:
                x = torch.randn(b, 3, h, w)
                row.append(f"{images_per_second(model, x, args.seconds):.1f}")
                row.append(f"{images_per_second(graph, x, args.seconds):.1f}")
        print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
