"""Which decode + resize the cpu backend's train path uses: every candidate on the same real images and the same
RandomResizedCrop boxes, per-image ms on one core and pixel difference to torchvision, measured in one run.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_decode_crop.py [--samples DIR] [--image-size 224]
        [--repeat 5] [--every 1]

For each of the 800 real ILSVRC2012 JPEGs (``--every N``: every N-th) one RandomResizedCrop box is drawn
(:func:`pipeline.read.transforms.random_resized_crop_box`, seeded by the file name) and every candidate turns the
JPEG bytes into the ``S×S×3`` uint8 crop written into one batch slot (flip not included: the same in all):

* ``full``          simplejpeg full decode, no crop: the full-decode-only cost, for reference;
* ``dct+torch``     the previous train path: simplejpeg decode at 1/1, 1/2, 1/4 or 1/8 (DCT scaling, the largest
                    reduction keeping the crop ≥ S), torch's antialiased uint8 bilinear resize of the crop into a
                    new tensor, copied into the slot;
* ``roi+torch``     the path chosen: nvImageCodec's libjpeg-turbo region decode of the box alone when the crop
                    needs the full scale and :func:`pipeline.read.transforms.region_pays`, else as ``dct+torch``;
                    torch's resize straight into the slot (``out=``);
* ``roi-always+torch``  the same with the region decoded whenever the crop needs the full scale;
* ``dct+cv2-area`` / ``dct+cv2-linear``  simplejpeg DCT-scaled decode, OpenCV ``resize`` (INTER_AREA /
                    INTER_LINEAR) into the slot; only when ``cv2`` imports (opencv-python-headless);
* ``pil``           the fallback: PIL ``draft`` (DCT scaling) + PIL BILINEAR resize of the box.

Pixel difference: mean |ours − torchvision| (0..255) per image against ``torchvision.transforms.functional
.resized_crop`` of the fully decoded PIL image with the same box; the table gives its mean and max over images.
Timing: one thread, ``--repeat`` rounds, the candidates interleaved in each round, median of the rounds.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import simplejpeg  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.common import DEFAULT_SAMPLES  # noqa: E402
from pipeline.read import transforms as T  # noqa: E402

try:
    import cv2
except ImportError:
    cv2 = None


def dct_crop(data: bytes, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """simplejpeg decode at the largest DCT reduction keeping the crop ≥ ``size``; the box's pixels (a view)."""
    h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    k = T._reduction(box[2], box[3], size)
    rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=math.ceil(w / k), min_height=math.ceil(h / k))
    fx, fy = w / rgb.shape[1], h / rgb.shape[0]
    left, top, cw, ch = box
    return rgb[round(top / fy):round((top + ch) / fy), round(left / fx):round((left + cw) / fx)]


def candidates(size: int) -> dict:
    """name → fn(jpeg bytes, box, slot ``S×S×3`` uint8) writing the crop into the slot."""
    def full(data, box, slot):
        simplejpeg.decode_jpeg(data, colorspace="RGB")

    def dct_torch(data, box, slot):
        crop = torch.from_numpy(dct_crop(data, box, size)).permute(2, 0, 1).unsqueeze(0)
        slot[...] = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0].permute(1, 2, 0)

    def roi_torch(data, box, slot):
        T._decode_turbo(data, size, lambda w, h: box, out=slot)

    def roi_always(data, box, slot):
        T._decode_turbo(data, size, lambda w, h: box, out=slot, roi_cost=(0.0, 0.0, 0.0))

    def pil(data, box, slot):
        slot[...] = T._decode_pil(data, size, lambda w, h: box)

    modes = {"full": full, "dct+torch": dct_torch, "roi+torch": roi_torch, "roi-always+torch": roi_always,
             "pil": pil}
    if cv2 is not None:
        cv2.setNumThreads(1)
        for name, interp in (("dct+cv2-area", cv2.INTER_AREA), ("dct+cv2-linear", cv2.INTER_LINEAR)):
            modes[name] = (lambda i: lambda data, box, slot:
                           cv2.resize(dct_crop(data, box, size), (size, size), dst=slot.numpy(), interpolation=i))(interp)
    return modes


def reference(path: Path, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """torchvision's resized_crop of the fully decoded PIL image: ``S×S×3`` float."""
    from torchvision.transforms import functional as TF

    left, top, w, h = box
    img = Image.open(path).convert("RGB")
    return torch.from_numpy(np.array(TF.resized_crop(img, top, left, h, w, [size, size], antialias=True))).float()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--every", type=int, default=1, help="use every N-th file (default 1: all)")
    args = p.parse_args()
    files = sorted(args.samples.glob("*.JPEG"))[::args.every]
    if not files:
        p.error(f"{args.samples}: no .JPEG files; pass --samples DIR")
    torch.set_num_threads(1)
    size = args.image_size
    datas = [f.read_bytes() for f in files]
    boxes = []
    for f, d in zip(files, datas):
        h, w, _, _ = simplejpeg.decode_jpeg_header(d)
        boxes.append(T.random_resized_crop_box(w, h, random.Random(f.name)))
    modes = candidates(size)
    slot = torch.empty((size, size, 3), dtype=torch.uint8)
    diffs = {m: [] for m in modes if m != "full"}
    for f, d, b in zip(files, datas, boxes):
        ref = reference(f, b, size)
        for m in diffs:
            modes[m](d, b, slot)
            diffs[m].append(float((slot.float() - ref).abs().mean()))
    ms = {m: [] for m in modes}
    for _ in range(args.repeat):
        for m, fn in modes.items():
            t0 = time.perf_counter()
            for d, b in zip(datas, boxes):
                fn(d, b, slot)
            ms[m].append(1e3 * (time.perf_counter() - t0) / len(datas))
    full_scale = np.mean([T._reduction(b[2], b[3], size) == 1 for b in boxes])
    print(f"{len(files)} real JPEGs, one RandomResizedCrop {size} box each ({100 * full_scale:.0f}% need the full "
          f"scale), one thread, median of {args.repeat} interleaved rounds; {T.decoder_name()}")
    print(f"  {'candidate':<17} {'ms/img':>7}  {'vs full':>7}  {'|diff| mean':>11}  {'max':>5}")
    for m in modes:
        med = statistics.median(ms[m])
        d = diffs.get(m)
        shown = f"{np.mean(d):11.3f}  {max(d):5.2f}" if d else f"{'-':>11}  {'-':>5}"
        print(f"  {m:<17} {med:7.3f}  {med / statistics.median(ms['full']):6.2f}x  {shown}")
    if cv2 is None:
        print("  (cv2 not importable: the OpenCV rows are left out; pip install opencv-python-headless to add them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
