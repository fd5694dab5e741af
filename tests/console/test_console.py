"""The web console in a real browser: Debian's headless chromium, driven by playwright-core
(console_test.js), against a real care-server serving the default repository (the demo
models) plus a model that fails to load. What the page shows (the model table, the top
classes, boxes and labels, the segmentation legend, instance masks, the server's error for
a bad file, the live request rate and latency) is compared with care-client's answers for
the same images. Screenshots go to $BUILD_DIR/test-output/console/."""
import json
import os
import re
import shutil
import subprocess
import time

import cv2
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("BUILD_DIR", "build"))
HERE = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.join(BUILD, "smoke_repository")
OUT = os.path.join(BUILD, "test-output", "console")
CLIENT = os.path.join(BUILD, "care-client")

CLASSIFIER = "care_s0_fashion"
DETECTOR = "care_s0_retinanet_fashion"
SEGMENTER = "care_s0_fpn_fashion"
INSTANCES = "care_s0_maskrcnn_fashion"
BROKEN = "broken_model"
SCENE = os.path.join(ROOT, "docs", "demo", "scene.png")
ANKLE_BOOT = os.path.join(ROOT, "docs", "demo", "ankle_boot.png")
HIGH_THRESHOLD = 0.9


def start_server(repository, log_path, *flags):
    log = open(log_path, "w")
    process = subprocess.Popen([os.path.join(BUILD, "care-server"), f"--model_repository={repository}",
                                "--host=127.0.0.1", "--port=0", "--metrics_port=-1", "--http_port=0", *flags],
                               stderr=log)
    deadline = time.time() + 300
    while True:
        text = open(log_path).read()
        assert process.poll() is None, text
        if "msg=serving" in text:
            grpc_port = re.search(r"grpc_port=(\d+)", text).group(1)
            http_port = re.search(r"http_port=(\d+)", text).group(1)
            return process, f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}"
        assert time.time() < deadline, text
        time.sleep(0.5)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "default_repository.sh"), REPOSITORY], check=True,
                   stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "model")))
    # The default repository, plus a model whose TorchScript is missing.
    repository = tmp_path_factory.mktemp("repository")
    models = [d for d in sorted(os.listdir(REPOSITORY)) if not d.startswith(".")]
    for name in models:
        os.symlink(os.path.join(REPOSITORY, name), repository / name)
    broken = repository / BROKEN
    (broken / "1").mkdir(parents=True)
    with open(os.path.join(REPOSITORY, CLASSIFIER, "config.json")) as f:
        config = json.load(f)
    config.update(name=BROKEN, default=False)
    (broken / "config.json").write_text(json.dumps(config))
    shutil.copy(os.path.join(REPOSITORY, CLASSIFIER, "labels.txt"), broken / "labels.txt")
    process, grpc_address, http_address = start_server(repository, tmp_path_factory.mktemp("log") / "server.log")
    try:
        yield grpc_address, http_address, models + [BROKEN]
    finally:
        process.terminate()
        process.wait(timeout=60)


def client(grpc_address, *args, check=True):
    result = subprocess.run([CLIENT, *args, f"--server={grpc_address}"], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def client_json(grpc_address, *args):
    return json.loads(client(grpc_address, *args, "--json").stdout)


def run_browser(url, plan, out):
    os.makedirs(out, exist_ok=True)
    plan_path = os.path.join(out, "plan.json")
    with open(plan_path, "w") as f:
        json.dump(plan, f)
    result = subprocess.run(["node", os.path.join(HERE, "console_test.js"), url, plan_path, out], cwd=HERE,
                            capture_output=True, text=True, timeout=600)
    seen = json.loads(result.stdout) if result.stdout.strip() else {}
    assert result.returncode == 0, f"{result.stderr}\nseen so far: {json.dumps(seen, indent=1)}"
    return seen


@pytest.fixture(scope="module")
def seen(server, tmp_path_factory):
    grpc_address, http_address, models = server
    bad = tmp_path_factory.mktemp("bad") / "not_an_image.png"
    bad.write_bytes(b"this is text, not a PNG\n" * 20)
    plan = {"classifier": CLASSIFIER, "detector": DETECTOR, "segmenter": SEGMENTER, "instances": INSTANCES,
            "ankle_boot": ANKLE_BOOT, "scene": SCENE, "bad_file": str(bad), "models": models,
            "high_threshold": HIGH_THRESHOLD}
    return run_browser(f"http://{http_address}/", plan, OUT), str(bad)


def labels_of(detect_answer):
    return sorted(d["label"] for d in detect_answer.get("detections", []))


def test_model_table_lists_every_model_as_listmodels_does(server, seen):
    grpc_address, _, models = server
    page, _ = seen
    listed = {m["name"]: m for m in client_json(grpc_address, "list")["models"]}
    rows = {r["model"]: r for r in page["table"]}
    assert sorted(rows) == sorted(models) == sorted(listed)
    for name, info in listed.items():
        row = rows[name]
        if info.get("ready"):
            assert row["state"] == "ready", row
            assert row["task"] == info["task"] and row["weights"] == info["weights_source"], (row, info)
            assert row["input"] == f'{info["input_width"]}×{info["input_height"]}', row
            assert row["versions"] == ", ".join(str(v) for v in info["versions"]), row
            assert row["precision"] == info["precision"], (row, info)
        else:
            # The server's own words for why it failed.
            assert row["state"] == f'failed: {info["error"]}', row
    assert rows[CLASSIFIER]["weights"] == "checkpoint" and rows["care_s0_imagenet"]["weights"] == "random"
    assert rows[BROKEN]["state"].startswith("failed: ") and "model.pt" in rows[BROKEN]["state"]


def test_page_loads_nothing_from_elsewhere_and_logs_no_errors(seen):
    page, _ = seen
    assert page["foreign_requests"] == []
    assert page["server"].startswith("careserve ")
    problems = [m for m in page["console"] if m.startswith(("error", "pageerror"))]
    # The bad file's refusal is the one HTTP error the browser itself reports.
    assert all("400" in m for m in problems), problems


def test_classifier_top5_equals_care_client(server, seen):
    page, _ = seen
    answer = client_json(server[0], "classify", f"--image={ANKLE_BOOT}", f"--model={CLASSIFIER}", "--top_k=5")
    assert page["steps"]["classify"]["top5"] == [c["label"] for c in answer["classes"]]
    assert page["steps"]["classify"]["top5"][0] == "Ankle boot"
    assert page["steps"]["classify"]["status"].startswith(f"{CLASSIFIER} answered in ")


def test_detector_boxes_and_labels_equal_care_client(server, seen):
    page, _ = seen
    answer = client_json(server[0], "detect", f"--image={SCENE}", f"--model={DETECTOR}")
    step = page["steps"]["detect"]
    assert len(answer["detections"]) > 0
    assert step["summary"] == f'{len(answer["detections"])} boxes'
    assert sorted(step["labels"]) == labels_of(answer)


def test_threshold_slider_asks_the_server_again(server, seen):
    page, _ = seen
    answer = client_json(server[0], "detect", f"--image={SCENE}", f"--model={DETECTOR}",
                         f"--score_threshold={HIGH_THRESHOLD}")
    step = page["steps"]["detect_threshold"]
    n = len(answer.get("detections", []))
    assert step["summary"] == f'{n} {"box" if n == 1 else "boxes"}'
    assert sorted(step["labels"]) == labels_of(answer)
    assert n < len(page["steps"]["detect"]["labels"])


def test_segmenter_legend_names_the_classes_of_care_clients_mask(server, seen, tmp_path):
    page, _ = seen
    mask_path = tmp_path / "mask.png"
    client(server[0], "segment", f"--image={SCENE}", f"--model={SEGMENTER}", f"--mask_out={mask_path}")
    mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    labels = open(os.path.join(REPOSITORY, SEGMENTER, "labels.txt")).read().splitlines()
    present = {labels[k] for k in np.unique(mask)}
    assert len(present) > 1
    assert set(page["steps"]["segment"]["legend"]) == present
    # The scene was dropped on the page (console_test.js waits for the answer to that file).
    assert page["steps"]["segment"]["status"].startswith(f"{SEGMENTER} answered in ")


def test_instance_masks_are_drawn_for_care_clients_detections(server, seen):
    page, _ = seen
    answer = client_json(server[0], "detect", f"--image={SCENE}", f"--model={INSTANCES}")
    step = page["steps"]["instances"]
    assert all(d.get("mask", {}).get("counts") for d in answer["detections"])
    assert step["summary"] == f'{len(answer["detections"])} boxes with masks'
    assert sorted(step["labels"]) == labels_of(answer)


def test_bad_file_shows_the_servers_error(server, seen):
    page, bad = seen
    refused = client(server[0], "classify", f"--image={bad}", f"--model={CLASSIFIER}", check=False)
    assert refused.returncode != 0
    step = page["steps"]["bad_file"]
    assert step["error_visible"] and step["error"]
    # care-client prints the gRPC status and the server's message; the page shows the message.
    assert step["error"] in refused.stderr, (step["error"], refused.stderr)
    assert step["status"] == f"{CLASSIFIER} refused the request"


def test_table_shows_live_rate_and_latency_from_the_servers_metrics(seen):
    page, _ = seen
    row = next(r for r in page["table_after"] if r["model"] == CLASSIFIER)
    assert float(row["rate"]) > 0
    assert re.fullmatch(r"\d+\.\d+ (ms|s)", row["p50"]), row
    # The same top class as the first time: the error in between did not upset the page.
    assert page["steps"]["classify_again"]["top5"] == page["steps"]["classify"]["top5"]
    assert os.path.exists(os.path.join(OUT, "console_detect.png"))
