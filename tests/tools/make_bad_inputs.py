#!/usr/bin/env python3
"""Writes the bad-input corpus of the hardening tests into tests/data/bad_inputs/.

Each case is one file (the image bytes, or a raw image's pixel bytes) and one entry of
manifest.json: the RPC, the request's other fields, and the status code and message the
server must answer with (docs/service.md, "Status codes"). Some inputs are unusual but
valid (1x1, 1xN, 16-bit, RGBA, CMYK): for those the expected code is OK.

The files are checked in; this script says how they were made. Deterministic:
  /usr/bin/python3 tests/tools/make_bad_inputs.py tests/data/bad_inputs
"""
import io
import json
import os
import struct
import sys
import zlib

import cv2
import numpy as np
from PIL import Image
from skimage import data

rng = np.random.default_rng(7)


def photo(w, h):
    """An RGB crop of a real photo (Debian's skimage samples), resized to w x h."""
    return cv2.resize(data.chelsea(), (w, h), interpolation=cv2.INTER_AREA)


def encode(ext, rgb_or_gray, *params):
    img = rgb_or_gray if rgb_or_gray.ndim == 2 else rgb_or_gray[:, :, ::-1]
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return bytes(buf)


def png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width, height, idat=b""):
    """A PNG whose IHDR declares width x height RGB8, with the given (tiny) IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_declaring(width, height):
    """A real small JPEG whose SOF0 frame header is rewritten to declare width x height."""
    b = bytearray(encode(".jpg", photo(64, 48)))
    sof = b.index(b"\xff\xc0")
    b[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(b)


def tiff_declaring(tiff, width, height):
    """The TIFF file with its first directory's ImageWidth and ImageLength rewritten."""
    b = bytearray(tiff)
    fmt = "<" if b[:2] == b"II" else ">"
    ifd = struct.unpack(fmt + "I", b[4:8])[0]
    count = struct.unpack(fmt + "H", b[ifd:ifd + 2])[0]
    for e in range(count):
        at = ifd + 2 + 12 * e
        tag, kind = struct.unpack(fmt + "HH", b[at:at + 4])
        if tag in (256, 257):
            value = width if tag == 256 else height
            b[at + 8:at + 12] = struct.pack(fmt + "HH", value, 0) if kind == 3 else struct.pack(fmt + "I", value)
    return bytes(b)


def main(out):
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        os.remove(os.path.join(out, f))
    cases = []

    def case(name, payload, code, message, rpc="Classify", **request):
        with open(os.path.join(out, name), "wb") as f:
            f.write(payload)
        cases.append(dict(name=name, rpc=rpc, code=code, message=message, request=request))

    good_jpeg = encode(".jpg", photo(96, 64), cv2.IMWRITE_JPEG_QUALITY, 90)
    good_png = encode(".png", photo(96, 64))

    # Not images at all.
    case("empty.bin", b"", "INVALID_ARGUMENT", "image.encoded is empty")
    case("random_bytes.bin", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "INVALID_ARGUMENT",
         "is not a JPEG, PNG, BMP, WebP or TIFF file")
    case("text.txt", b"hello, this is not an image\n" * 10, "INVALID_ARGUMENT", "(280 bytes) is not a JPEG")
    case("pdf.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "INVALID_ARGUMENT",
         "is a PDF file, not a JPEG")
    case("heif.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "INVALID_ARGUMENT",
         "is a HEIF file, not a JPEG")

    # Truncated and corrupt files of supported formats.
    case("truncated.jpg", good_jpeg[:len(good_jpeg) // 2], "INVALID_ARGUMENT",
         "the JPEG file (1485 bytes) is truncated: its scan data has no end-of-image marker")
    case("truncated.png", good_png[:len(good_png) // 2], "INVALID_ARGUMENT", "cannot decode the PNG")
    case("magic_only.jpg", b"\xff\xd8\xff", "INVALID_ARGUMENT", "cannot decode the JPEG")
    case("magic_only.png", b"\x89PNG\r\n\x1a\n", "INVALID_ARGUMENT", "cannot decode the PNG")
    dht = good_jpeg.index(b"\xff\xc4")
    case("corrupt_huffman_table.jpg", good_jpeg[:dht + 4] + b"\xff" * 17 + good_jpeg[dht + 21:], "INVALID_ARGUMENT",
         "cannot decode the JPEG")
    ihdr_end = 8 + 25
    case("corrupt_png_body.png", good_png[:ihdr_end] + png_chunk(b"IDAT", rng.integers(0, 256, 500, dtype=np.uint8)
                                                                  .tobytes()) + png_chunk(b"IEND", b""),
         "INVALID_ARGUMENT", "cannot decode the PNG")
    case("bad_crc.png", good_png[:40] + bytes([good_png[40] ^ 0xFF]) + good_png[41:], "INVALID_ARGUMENT",
         "cannot decode the PNG")
    good_bmp = encode(".bmp", photo(32, 24))
    case("truncated.bmp", good_bmp[:len(good_bmp) // 2], "INVALID_ARGUMENT", "cannot decode the BMP")
    good_webp = encode(".webp", photo(32, 24), cv2.IMWRITE_WEBP_QUALITY, 90)
    case("truncated.webp", good_webp[:len(good_webp) // 2], "INVALID_ARGUMENT", "cannot decode the WebP")
    case("garbage.tiff", b"II*\x00" + rng.integers(0, 256, 300, dtype=np.uint8).tobytes(), "INVALID_ARGUMENT",
         "cannot decode the TIFF")

    # Decompression bombs: small files declaring huge images, refused from the header.
    case("bomb_100000x100000.png", png_declaring(100000, 100000, zlib.compress(bytes(1000))), "INVALID_ARGUMENT",
         "the PNG header declares 100000x100000 (10000000000 pixels), more than the limit of")
    # Found by tests/fuzz/decode_fuzzer: sides whose product overflows 64-bit signed arithmetic.
    case("bomb_4294967295x4294967295.png", png_declaring(2**32 - 1, 2**32 - 1, zlib.compress(bytes(10))),
         "INVALID_ARGUMENT", "the PNG header declares 4294967295x4294967295 (18446744065119617025 pixels)")
    case("bomb_65000x65000.jpg", jpeg_declaring(65000, 65000), "INVALID_ARGUMENT",
         "the JPEG header declares 65000x65000 (4225000000 pixels)")
    # Found by tests/fuzz/decode_fuzzer: a junk byte before the frame header. libjpeg skips it
    # (and decoded 16384x64415: a 3 GB allocation); the header check must skip it too.
    bomb = jpeg_declaring(16384, 64415)
    sof = bomb.index(b"\xff\xc0")
    case("bomb_junk_before_frame_16384x64415.jpg", bomb[:sof] + b"\x14" + bomb[sof:], "INVALID_ARGUMENT",
         "the JPEG header declares 16384x64415 (1055375360 pixels), more than the limit of")
    tiff = io.BytesIO()
    Image.fromarray(photo(32, 24)).save(tiff, format="TIFF", compression="tiff_deflate")
    case("bomb_20000x20000.tiff", tiff_declaring(tiff.getvalue(), 20000, 20000), "INVALID_ARGUMENT",
         "the TIFF header declares 20000x20000 (400000000 pixels), more than the limit of")
    bmp = bytearray(good_bmp)
    bmp[18:26] = struct.pack("<ii", 60000, -60000)
    case("bomb_60000x60000.bmp", bytes(bmp), "INVALID_ARGUMENT", "the BMP header declares 60000x60000")
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0, 0, 0, 0]) + (16383).to_bytes(3, "little") * 2
    case("bomb_16384x16384.webp", b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x, "INVALID_ARGUMENT",
         "the WebP header declares 16384x16384")
    case("zero_width.png", png_declaring(0, 10, zlib.compress(bytes(10))), "INVALID_ARGUMENT",
         "the PNG header declares a 0x10 image")

    # Unsupported: animated GIF (OpenCV 4.6 has no GIF decoder).
    frames = [Image.fromarray(photo(32, 24)), Image.fromarray(photo(32, 24)[::-1].copy())]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    case("animated.gif", gif.getvalue(), "INVALID_ARGUMENT", "is a GIF file, not a JPEG, PNG, BMP, WebP or TIFF file")

    # Unusual but valid images: answered.
    case("1x1.png", encode(".png", photo(1, 1)), "OK", "")
    case("1x300.png", encode(".png", photo(1, 300)), "OK", "")
    case("300x1.jpg", encode(".jpg", photo(300, 1)), "OK", "")
    # 64811x1: center_crop would cover 16.6M x 256 pixels (12 GB) at 224x224; found by the
    # decode fuzzer as a 917-byte JPEG. Only the cut is computed (server/preprocess/resize.cc).
    case("64811x1.jpg", encode(".jpg", photo(64811, 1)), "OK", "")
    case("16bit.png", cv2.imencode(".png", (photo(48, 32)[:, :, ::-1].astype(np.uint16) * 257))[1].tobytes(), "OK", "")
    rgba = np.dstack([photo(48, 32), np.full((32, 48), 128, np.uint8)])
    case("rgba.png", cv2.imencode(".png", rgba[:, :, [2, 1, 0, 3]])[1].tobytes(), "OK", "")
    cmyk = io.BytesIO()
    Image.fromarray(photo(48, 32)).convert("CMYK").save(cmyk, format="JPEG", quality=90)
    case("cmyk.jpg", cmyk.getvalue(), "OK", "")
    case("gray.jpg", encode(".jpg", cv2.cvtColor(photo(48, 32), cv2.COLOR_RGB2GRAY)), "OK", "")

    # Raw pixels with inconsistent descriptions.
    pixels = photo(8, 4).tobytes()  # 8x4 RGB8: 96 bytes
    case("raw_short.raw", pixels[:-1], "INVALID_ARGUMENT",
         "image.raw.data has 95 bytes; a 8x4 RGB8 image needs exactly 96", raw=dict(width=8, height=4, format="RGB8"))
    case("raw_long.raw", pixels + b"\x00" * 4, "INVALID_ARGUMENT", "image.raw.data has 100 bytes",
         raw=dict(width=8, height=4, format="RGB8"))
    case("raw_gray_as_rgb.raw", pixels[:32], "INVALID_ARGUMENT", "needs exactly 96",
         raw=dict(width=8, height=4, format="RGB8"))
    case("raw_negative_width.raw", pixels, "INVALID_ARGUMENT", "width and height must be positive, got -8x4",
         raw=dict(width=-8, height=4, format="RGB8"))
    case("raw_zero_height.raw", pixels, "INVALID_ARGUMENT", "width and height must be positive, got 8x0",
         raw=dict(width=8, height=0, format="RGB8"))
    case("raw_unknown_format.raw", pixels, "INVALID_ARGUMENT", "image.raw.format must be RGB8, BGR8 or GRAY8, got 99 (not a PixelFormat)",
         raw=dict(width=8, height=4, format=99))
    case("raw_unspecified_format.raw", pixels, "INVALID_ARGUMENT", "image.raw.format must be RGB8, BGR8 or GRAY8",
         raw=dict(width=8, height=4, format=0))
    case("raw_huge_declared.raw", pixels, "INVALID_ARGUMENT", "image is 100000x100000 (10000000000 pixels), more than",
         raw=dict(width=100000, height=100000, format="RGB8"))

    # Out-of-range parameters on a good image.
    good = "good.jpg"
    with open(os.path.join(out, good), "wb") as f:
        f.write(good_jpeg)
    for name, rpc, request, message in [
        ("top_k_beyond_classes", "Classify", dict(top_k=1001), "top_k must be between 0 and 1000"),
        ("negative_top_k", "Classify", dict(top_k=-3), "got -3"),
        ("nan_score_threshold", "Detect", dict(score_threshold="nan"), "score_threshold must be in [0, 1]"),
        ("negative_score_threshold", "Detect", dict(score_threshold=-0.5), "score_threshold must be in [0, 1]"),
        ("infinite_iou_threshold", "Detect", dict(iou_threshold="inf"), "iou_threshold must be in [0, 1]"),
        ("negative_iou_threshold", "Detect", dict(iou_threshold=-0.1), "iou_threshold must be in [0, 1]"),
        ("negative_max_detections", "Detect", dict(max_detections=-1), "max_detections must be in [0, 10000]"),
        ("huge_max_detections", "Detect", dict(max_detections=2**31 - 1), "max_detections must be in [0, 10000]"),
    ]:
        cases.append(dict(name=good, case=name, rpc=rpc, code="INVALID_ARGUMENT", message=message, request=request))

    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"cases": cases}, f, indent=1)
        f.write("\n")
    print(f"{len(cases)} cases in {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "../data/bad_inputs"))
