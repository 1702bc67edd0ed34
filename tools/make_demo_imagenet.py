"""``make-demo-imagenet OUT [--train-per-class N] [--val-per-class N] [--seed S]``.

Writes a small ImageNet-layout tree (``OUT/train/<wnid>/*.JPEG``, ``OUT/val/<wnid>/*.JPEG``) of images
generated deterministically from the seed: 10 classes (the first 10 ImageNet wnids), each a colour
family plus a shape, with random size, position, jitter and noise, so a ResNet50 learns them at low
resolution in a few epochs. Like real ImageNet it holds one grayscale JPEG, one CMYK JPEG and one PNG
saved under a ``.JPEG`` name (all in train/).
"""

from __future__ import annotations

import argparse
import colorsys
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw

from tools.cli_common import Component, Components, Parser, add_option

# The first ten ImageNet-1k wnids in sorted order (class indices 0..9 of the full dataset).
DEMO_WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475",
              "n01496331", "n01498041", "n01514668", "n01514859", "n01518878")
SHAPES = ("disc", "square", "triangle", "hstripes", "vstripes", "checker", "ring", "cross", "diagonal", "dots")


def _rgb(hue: float, sat: float, val: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, min(max(sat, 0), 1), min(max(val, 0), 1))
    return int(r * 255), int(g * 255), int(b * 255)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x0: int, y0: int, side: int,
                fg: tuple[int, int, int]) -> None:
    """Draw ``shape`` (one of :data:`SHAPES`), ``side`` px wide, top left at (``x0``, ``y0``), in colour ``fg``."""
    box = (x0, y0, x0 + side, y0 + side)
    step = max(4, side // 5)
    if shape == "disc":
        draw.ellipse(box, fill=fg)
    elif shape == "square":
        draw.rectangle(box, fill=fg)
    elif shape == "triangle":
        draw.polygon([(x0, y0 + side), (x0 + side, y0 + side), (x0 + side // 2, y0)], fill=fg)
    elif shape == "hstripes":
        for y in range(y0, y0 + side, step):
            draw.rectangle((x0, y, x0 + side, y + step // 2), fill=fg)
    elif shape == "vstripes":
        for x in range(x0, x0 + side, step):
            draw.rectangle((x, y0, x + step // 2, y0 + side), fill=fg)
    elif shape == "checker":
        for i, y in enumerate(range(y0, y0 + side, step)):
            for j, x in enumerate(range(x0, x0 + side, step)):
                if (i + j) % 2 == 0:
                    draw.rectangle((x, y, x + step - 1, y + step - 1), fill=fg)
    elif shape == "ring":
        draw.ellipse(box, outline=fg, width=max(3, side // 7))
    elif shape == "cross":
        t = max(3, side // 5)
        draw.rectangle((x0 + side // 2 - t // 2, y0, x0 + side // 2 + t // 2, y0 + side), fill=fg)
        draw.rectangle((x0, y0 + side // 2 - t // 2, x0 + side, y0 + side // 2 + t // 2), fill=fg)
    elif shape == "diagonal":
        for k in range(-side, side, step):
            draw.line((x0 + k, y0, x0 + k + side, y0 + side), fill=fg, width=max(2, step // 3))
    else:  # dots
        r = max(2, step // 3)
        for y in range(y0, y0 + side, step):
            for x in range(x0, x0 + side, step):
                draw.ellipse((x, y, x + 2 * r, y + 2 * r), fill=fg)


def render(class_index: int, rng: np.random.Generator) -> Image.Image:
    """Draw one RGB image of class ``class_index`` (0..9), size 72..136 px per side."""
    width, height = (int(v) for v in rng.integers(72, 137, size=2))
    hue = class_index / len(DEMO_WNIDS) + rng.normal(0, 0.015)
    bg = _rgb(hue, rng.uniform(0.55, 0.95), rng.uniform(0.55, 0.95))
    fg = _rgb(hue + 0.5, rng.uniform(0.3, 0.9), rng.uniform(0.2, 1.0))
    img = Image.new("RGB", (width, height), bg)
    side = int(min(width, height) * rng.uniform(0.35, 0.7))
    x0, y0 = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    _draw_shape(ImageDraw.Draw(img), SHAPES[class_index], x0, y0, side, fg)
    pixels = np.asarray(img, dtype=np.int16) + rng.normal(0, 8, size=(height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _encode(img: Image.Image, quirk: str) -> bytes:
    out = io.BytesIO()
    if quirk == "grayscale":
        img.convert("L").save(out, "JPEG", quality=90)
    elif quirk == "cmyk":
        img.convert("CMYK").save(out, "JPEG", quality=90)
    elif quirk == "png":
        img.save(out, "PNG")
    else:
        img.save(out, "JPEG", quality=90)
    return out.getvalue()


# (split, class index, image index) → quirk; the rest are plain RGB JPEGs.
QUIRKS = MappingProxyType({("train", 0, 0): "grayscale", ("train", 1, 0): "cmyk", ("train", 2, 0): "png"})


@dataclass(frozen=True)
class DemoOptions:
    """What the demo tree holds: ``train_per_class`` / ``val_per_class`` images per class (10 classes), generated
    from ``seed``; the one place of their defaults (the flags and :func:`write_demo_tree` read them)."""

    train_per_class: int = 80
    val_per_class: int = 20
    seed: int = 0


COMPONENTS = Components((Component(DemoOptions, None, None),))


def write_demo_tree(out: Path, train_per_class: int = DemoOptions.train_per_class,
                    val_per_class: int = DemoOptions.val_per_class, seed: int = DemoOptions.seed) -> int:
    """Write the demo tree into ``out`` and return the number of files written.

    The same arguments always give byte-identical files. Existing files of the same names are replaced.
    """
    count = 0
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c, wnid in enumerate(DEMO_WNIDS):
            folder = out / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, c, 0 if split == "train" else 1])
            for i in range(per_class):
                data = _encode(render(c, rng), QUIRKS.get((split, c, i), ""))
                (folder / f"{wnid}_{i:05d}.JPEG").write_bytes(data)
                count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="make-demo-imagenet", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write train/ and val/ into")
    options = (COMPONENTS.option(DemoOptions, "train_per_class", "--train-per-class", int, "train images per class"),
               COMPONENTS.option(DemoOptions, "val_per_class", "--val-per-class", int, "val images per class"),
               COMPONENTS.option(DemoOptions, "seed", "--seed", int, "generator seed"))
    for option in options:
        add_option(parser, option)
    args = parser.parse_args(argv)
    if args.train_per_class < 1 or args.val_per_class < 0:
        parser.error("--train-per-class must be >= 1 and --val-per-class >= 0")
    demo = COMPONENTS.build(COMPONENTS.field_values(options, args))
    try:
        written = write_demo_tree(args.out, demo.train_per_class, demo.val_per_class, demo.seed)
    except OSError as exc:  # an OUT that is a file, read-only, on a full disk: one line, not a traceback
        parser.fail(f"{exc.filename or args.out}: cannot write ({exc.strerror or exc}); choose another OUT folder")
    print(f"make-demo-imagenet: wrote {written} images of {len(DEMO_WNIDS)} classes to {args.out}/ "
          f"(train/ holds 1 grayscale JPEG, 1 CMYK JPEG, 1 PNG named .JPEG)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
