"""Demo weights for careserve: CARE-S0 trained on Fashion-MNIST (Debian's
dataset-fashion-mnist) for classification, and on scenes composed of its items for
detection (RetinaNet) and segmentation (Semantic FPN).

    fashion.py    the dataset and the scene generator
    train.py      training (make train-demo), half-precision state_dicts into model/weights/
    evaluate.py   accuracy, mAP@0.5 and mIoU through a running care-server
"""
