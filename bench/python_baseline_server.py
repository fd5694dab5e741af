"""The baseline a user might write instead of care-server: a Python gRPC server
(Debian's python3-grpcio) serving Classify with the eager PyTorch model from carevision,
one request at a time per worker thread, preprocessing with PIL and torchvision as the
timm evaluation does. Same API and same weights as the exported model (seed 0), so
care-bench measures both the same way.

    PYTHONPATH=model /usr/bin/python3 bench/python_baseline_server.py --port 50061 [--workers 8]
"""
import argparse
import os
import sys
from concurrent import futures
import io

import grpc
import torch
from PIL import Image
from torchvision import transforms

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))
from care_client import load_stubs  # noqa: E402  (generates the stubs from proto/)

import carevision  # noqa: E402
from carevision.export import default_labels  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=50061)
    parser.add_argument("--arch", default="care_s0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)  # the exporter's default seed: the same random weights
    model = carevision.create_model(args.arch).eval()
    labels = default_labels("classification")
    preprocess = transforms.Compose([
        transforms.Resize(int(args.size / 0.875), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(args.size),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    pb, pb_grpc = load_stubs()

    class Servicer(pb_grpc.VisionServiceServicer):
        def Classify(self, request, context):
            try:
                image = Image.open(io.BytesIO(request.image.encoded)).convert("RGB")
            except Exception as e:  # what a quick server does: report and carry on
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot decode the image: {e}")
            with torch.inference_mode():
                probabilities = model(preprocess(image)[None]).softmax(-1)[0]
            top = probabilities.topk(request.top_k or 5)
            return pb.ClassifyResponse(model=f"{args.arch}_python", model_version=1, classes=[
                pb.Classification(index=int(i), label=labels[int(i)], score=float(s))
                for s, i in zip(top.values, top.indices)])

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    pb_grpc.add_VisionServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"python baseline serving on {args.port}", file=sys.stderr, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
