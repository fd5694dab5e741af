"""The Fashion-MNIST demo models as `make serve` serves them: exported from the committed
weights into the default repository, served by a real care-server on loopback. A few
hundred test images and test scenes through the server must reach at least 85% of the
figures of the full evaluation (model/weights/metrics.json, docs/models.md)."""
import json
import os
import re
import subprocess
import sys
import time

import grpc
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("BUILD_DIR", "build"))
WEIGHTS = os.path.join(ROOT, "model", "weights")
REPOSITORY = os.path.join(BUILD, "smoke_repository")
sys.path.insert(0, os.path.join(ROOT, "model"))

from carevision.demo import evaluate, fashion  # noqa: E402
from carevision.demo.train import FILES  # noqa: E402

FRACTION = 0.85


@pytest.fixture(scope="module")
def measured():
    with open(os.path.join(WEIGHTS, "metrics.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "model"))
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "default_repository.sh"), REPOSITORY], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    log_path = tmp_path_factory.mktemp("demo") / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([os.path.join(BUILD, "care-server"), f"--model_repository={REPOSITORY}",
                                    "--host=127.0.0.1", "--port=0", "--metrics_port=0", "--http_port=0"], stderr=log)
    try:
        deadline = time.time() + 300
        while True:
            text = log_path.read_text()
            assert process.poll() is None, text
            port = re.search(r"grpc_port=(\d+)", text)
            if port and "msg=serving" in text:
                break
            assert time.time() < deadline, text
            time.sleep(0.5)
        pb, pb_grpc = evaluate.load_stubs()
        with grpc.insecure_channel(f"127.0.0.1:{port.group(1)}") as channel:
            yield pb, pb_grpc.VisionServiceStub(channel)
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_weights_are_half_precision_and_within_60_mb():
    total = 0
    for name in FILES.values():
        path = os.path.join(WEIGHTS, name)
        total += os.path.getsize(path)
        state = torch.load(path)
        floats = [v.dtype for v in state.values() if v.is_floating_point()]
        assert floats and set(floats) == {torch.float16}, name
    assert total <= 60e6


def test_demo_models_are_the_defaults_with_trained_weights(server):
    pb, stub = server
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=30).models}
    for name in (evaluate.CLASSIFIER, evaluate.DETECTOR, evaluate.SEGMENTER, evaluate.INSTANCES):
        assert models[name].ready and models[name].weights_source.startswith("checkpoint"), models[name]
    images, labels = fashion.load("test")
    answer = stub.Classify(pb.ClassifyRequest(image=pb.Image(encoded=evaluate.png(images[0]))), timeout=30)
    assert answer.model == evaluate.CLASSIFIER and answer.classes[0].label in fashion.LABELS


def test_classification_accuracy_through_the_server(server, measured):
    pb, stub = server
    images, labels = fashion.load("test")
    # 400 images from all over the split (its classes are interleaved)
    pick = slice(0, 10000, 25)
    result = evaluate.classification_accuracy(stub, pb, images[pick], labels[pick])
    assert result["accuracy"] >= FRACTION * measured["classification"]["accuracy"], result


@pytest.fixture(scope="module")
def scenes():
    # other scenes than the full evaluation's (seed 2024)
    return list(fashion.scenes("test", 200, seed=7))


def test_detection_map_through_the_server(server, measured, scenes):
    pb, stub = server
    result = evaluate.detection_map(stub, pb, scenes)
    assert result["map50"] >= FRACTION * measured["detection"]["map50"], result


def test_segmentation_miou_through_the_server(server, measured, scenes):
    pb, stub = server
    result = evaluate.segmentation_miou(stub, pb, scenes)
    assert result["miou"] >= FRACTION * measured["segmentation"]["miou"], result


def test_instance_segmentation_through_the_server(server, measured, scenes):
    pb, stub = server
    result = evaluate.instance_map(stub, pb, scenes)
    assert result["box_map50"] >= FRACTION * measured["instance_segmentation"]["box_map50"], result
    assert result["mask_map50"] >= FRACTION * measured["instance_segmentation"]["mask_map50"], result
