"""A Python example client of care-server (Debian's python3-grpcio and python3-protobuf).

    /usr/bin/python3 clients/python/care_client.py --server localhost:50051 list
    /usr/bin/python3 clients/python/care_client.py classify cat.jpg [--model NAME] [--top-k 5]

The Python stubs are generated from proto/ at start-up with protoc and Debian's
grpc_python_plugin (packages protobuf-compiler, protobuf-compiler-grpc), into a
temporary directory: nothing to install from PyPI.
"""
import argparse
import importlib
import os
import subprocess
import sys
import tempfile

import grpc

PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")


def load_stubs():
    """Generates and imports care.vision.v1's messages and stubs."""
    out = tempfile.mkdtemp(prefix="care_stubs_")
    subprocess.run(["protoc", f"--proto_path={PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}",
                    "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin",
                    os.path.join(PROTO_DIR, "care/vision/v1/vision.proto")], check=True)
    for package in ("care", "care/vision", "care/vision/v1"):
        open(os.path.join(out, package, "__init__.py"), "a").close()
    sys.path.insert(0, out)
    return (importlib.import_module("care.vision.v1.vision_pb2"),
            importlib.import_module("care.vision.v1.vision_pb2_grpc"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="localhost:50051")
    parser.add_argument("--timeout", type=float, default=30.0)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="models in the repository")
    classify = sub.add_parser("classify", help="classify an image file")
    classify.add_argument("image")
    classify.add_argument("--model", default="")
    classify.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)

    pb, pb_grpc = load_stubs()
    with grpc.insecure_channel(args.server) as channel:
        stub = pb_grpc.VisionServiceStub(channel)
        try:
            if args.command == "list":
                for m in stub.ListModels(pb.ListModelsRequest(), timeout=args.timeout).models:
                    state = "ready" if m.ready else f"FAILED: {m.error}"
                    print(f"{m.name}\t{m.task}\t{m.architecture}\t{m.input_height}x{m.input_width}\t"
                          f"weights={m.weights_source}\tprecision={m.precision or '-'}\t"
                          f"versions={list(m.versions)}\t{state}")
            else:
                with open(args.image, "rb") as f:
                    request = pb.ClassifyRequest(model=args.model, top_k=args.top_k,
                                                 image=pb.Image(encoded=f.read()))
                response = stub.Classify(request, timeout=args.timeout)
                print(f"{response.model} version {response.model_version}")
                for rank, c in enumerate(response.classes, 1):
                    print(f"{rank:3d}. {100 * c.score:8.4f}%  {c.label} (class {c.index})")
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return e.code().value[0]
    return 0


if __name__ == "__main__":
    sys.exit(main())
