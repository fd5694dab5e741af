import json
import os
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "model"))
sys.path.insert(0, os.path.dirname(__file__))

GOLDEN_DIR = os.path.join(ROOT, "tests", "data", "golden")
ARCHS = ["care_s0", "care_s1", "care_s2", "casvit_xs", "casvit_s", "casvit_m", "casvit_t"]


def golden(arch):
    with open(os.path.join(GOLDEN_DIR, f"{arch}.json")) as f:
        return json.load(f)


@pytest.fixture(autouse=True, scope="session")
def _threads():
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
