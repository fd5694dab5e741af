#!/usr/bin/env python3
"""Seeds of the request fuzzer (tests/fuzz/request_fuzzer.cc): serialized DetectRequests
and ClassifyRequests, valid and invalid, with images from the bad-input corpus.
Deterministic; the output is checked in:
  /usr/bin/python3 tests/tools/make_fuzz_seeds.py tests/fuzz/corpus/request
"""
import math
import os
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def main(out):
    with tempfile.TemporaryDirectory() as gen:
        subprocess.run(["protoc", f"--proto_path={ROOT}/proto", f"--python_out={gen}",
                        f"{ROOT}/proto/care/vision/v1/vision.proto"], check=True)
        sys.path.insert(0, gen)
        from care.vision.v1 import vision_pb2 as v1
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        os.remove(os.path.join(out, f))
    bad = os.path.join(ROOT, "tests", "data", "bad_inputs")
    images = {}
    for name in ["good.jpg", "1x1.png", "truncated.jpg", "bomb_100000x100000.png", "rgba.png", "cmyk.jpg"]:
        with open(os.path.join(bad, name), "rb") as f:
            images[name] = v1.Image(encoded=f.read())
    images["raw"] = v1.Image(raw=v1.RawImage(width=4, height=2, format=v1.RGB8, data=bytes(range(24))))
    images["raw_short"] = v1.Image(raw=v1.RawImage(width=4, height=2, format=v1.GRAY8, data=bytes(7)))
    seeds = {}
    for name, image in images.items():
        seeds[f"detect_{name}"] = v1.DetectRequest(model="m", image=image, score_threshold=0.3, iou_threshold=0.5,
                                                   max_detections=10)
        seeds[f"classify_{name}"] = v1.ClassifyRequest(model="m", image=image, top_k=3)
    for name, kwargs in [("nan", dict(score_threshold=math.nan)), ("inf", dict(iou_threshold=math.inf)),
                         ("negative", dict(score_threshold=-1.0)), ("max_det", dict(max_detections=2**31 - 1))]:
        seeds[f"detect_{name}"] = v1.DetectRequest(image=images["raw"], **kwargs)
    seeds["classify_top_k_negative"] = v1.ClassifyRequest(image=images["raw"], top_k=-5)
    for name, message in sorted(seeds.items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(message.SerializeToString())
    print(f"{len(seeds)} seeds in {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fuzz", "corpus", "request"))
