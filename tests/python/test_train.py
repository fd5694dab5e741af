"""make train-demo, in miniature: every stage runs (backbone seed, first cycles, warm
restarts, the four processes side by side) and writes half-precision weights that load into
the models the exporter builds from them."""
import os
import subprocess
import sys

import pytest
import torch

from carevision import create_model
from carevision.checkpoint import infer_head_options
from carevision.demo.train import FILES, SEED_FILE, phase_one_path

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def train(task, out, work, *more):
    """python3 -m carevision.demo.train at 0.03% of every schedule; its log."""
    run = subprocess.run([sys.executable, "-m", "carevision.demo.train", "--task", task, "--scale", "0.0003",
                          "--out", str(out), "--work", str(work), "--threads", "1", *more],
                         env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "model")),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out, work = tmp_path_factory.mktemp("weights"), tmp_path_factory.mktemp("work")
    return out, work, train("all", out, work)


def test_train_demo_writes_all_four_models(trained):
    out, work, log = trained
    assert "train-demo: trained in" in log
    assert os.path.exists(os.path.join(work, SEED_FILE))
    for task, file in FILES.items():
        state = torch.load(os.path.join(out, file))
        assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point()), task
        # the restart cycle ran where the schedule has one, from the kept first cycle
        first = torch.load(phase_one_path(work, task))
        assert first.keys() == state.keys()
        changed = any(not torch.equal(first[k], state[k]) for k in state if state[k].is_floating_point())
        assert changed == (task not in ("detection", "instance_segmentation")), task
        classes = 11 if task == "segmentation" else 10
        model = create_model("care_s0", task, classes, **infer_head_options(state, task))
        model.load_state_dict({k: v.float() for k, v in state.items()})


def test_resume_restarts_from_the_kept_first_cycle(trained, tmp_path):
    _, work, _ = trained
    log = train("all", tmp_path, work, "--resume")  # forwarded to the four processes
    for task in FILES:
        assert f"train {task}: resuming from" in log, task
    # one cycle ran (the restart), not two; detection and Mask R-CNN have no restart
    assert log.count("train segmentation: step 1/1") == 1
    assert log.count("train detection: step 1/1") == 0
    assert log.count("train instance_segmentation: step 1/1") == 0
