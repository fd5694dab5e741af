#!/usr/bin/env bash
# Writes real photos as JPEG into $1 for first requests and demos: Debian's
# python3-skimage sample images (licences: /usr/share/doc/python3-skimage/copyright).
set -euo pipefail
out=$1
mkdir -p "$out"
/usr/bin/python3 - "$out" <<'PY'
import os, sys
import cv2
data = "/usr/lib/python3/dist-packages/skimage/data"
for name, target in [("chelsea.png", "cat.jpg"), ("astronaut.png", "astronaut.jpg"), ("coffee.png", "coffee.jpg"),
                     ("motorcycle_left.png", "motorcycle.jpg")]:
    path = os.path.join(sys.argv[1], target)
    if not os.path.exists(path):
        cv2.imwrite(path, cv2.imread(os.path.join(data, name), cv2.IMREAD_COLOR), [cv2.IMWRITE_JPEG_QUALITY, 92])
PY
