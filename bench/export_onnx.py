"""The ONNX Runtime baseline's model for make bench: the same network and weights as the
default repository's classifier (carevision.create_model, random weights of the same seed),
exported with torch.onnx.export (opset 17, batch dimension dynamic). Also writes one input and
the eager model's logits for it, so that bench/ort/ort_bench.js --verify checks that ONNX
Runtime computes the same function before it is timed.

    /usr/bin/python3 bench/export_onnx.py --arch care_s0 --out build/bench_onnx
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model"))
from carevision import create_model  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="care_s0")
    p.add_argument("--out", required=True, help="directory for ARCH.onnx, ARCH.input.f32 and ARCH.logits.f32")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (the repository's export uses 0)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    model = create_model(args.arch).eval()
    x = torch.randn(2, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    path = os.path.join(args.out, f"{args.arch}.onnx")
    with torch.no_grad():
        torch.onnx.export(model, x, path, opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        logits = model(x)
    x.numpy().tofile(os.path.join(args.out, f"{args.arch}.input.f32"))
    logits.numpy().tofile(os.path.join(args.out, f"{args.arch}.logits.f32"))
    print(f"export_onnx: wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)", file=sys.stderr)


if __name__ == "__main__":
    main()
