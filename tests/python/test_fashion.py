"""The Fashion-MNIST demo data: the dataset reads as documented and the scenes are what
the detection and segmentation models are trained and evaluated on."""
import numpy as np
import pytest

from carevision.demo import fashion
from carevision.demo.evaluate import average_precision


@pytest.fixture(scope="module")
def test_split():
    return fashion.load("test")


def test_dataset_splits(test_split):
    images, labels = test_split
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10  # the test split is balanced


def test_scenes_are_reproducible_and_consistent(test_split):
    a = list(fashion.scenes("test", 20, seed=7))
    b = list(fashion.scenes("test", 20, seed=7))
    assert all((x.image == y.image).all() and (x.boxes == y.boxes).all() for x, y in zip(a, b))
    assert not all((x.image == y.image).all() for x, y in zip(a, fashion.scenes("test", 20, seed=8)))
    for scene in a:
        assert scene.image.shape == (128, 128, 3) and 1 <= len(scene.boxes) <= 4
        assert len(scene.boxes) == len(scene.labels)
        for box, label in zip(scene.boxes.astype(int), scene.labels):
            x1, y1, x2, y2 = box
            inside = scene.mask[y1:y2, x1:x2]
            # the box is the tight extent of the item's mask pixels
            assert (inside == label + 1).any(axis=0)[[0, -1]].all()
            assert (inside == label + 1).any(axis=1)[[0, -1]].all()
            assert ((scene.mask == label + 1).sum() >= (inside == label + 1).sum())
        # every mask pixel belongs to a box
        covered = np.zeros_like(scene.mask, bool)
        for x1, y1, x2, y2 in scene.boxes.astype(int):
            covered[y1:y2, x1:x2] = True
        assert not (scene.mask.astype(bool) & ~covered).any()


def test_average_precision_by_hand():
    # two objects; detections by score: hit, miss, hit -> precision 1 up to recall 0.5,
    # 2/3 up to recall 1
    ap = average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2)
    assert ap == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)
    assert average_precision(np.array([]), np.array([], bool), 3) == 0.0
    assert average_precision(np.array([0.5]), np.array([True]), 1) == 1.0
