"""Do the loaders' val pipelines give torchvision's eval pixels, and does the rest change a model's predictions?

Shards a folder of ``<wnid>_<name>.JPEG`` files (default: the 800 shared ImageNet samples) with this project's
sharder, one val image per file, then per image size:

* pixels: every shard backend's val batch (``--loader cpu`` / ``nvjpeg`` / ``dali``, all on the CPU here, uint8,
  not normalised) against torchvision's ``Resize(eval_resize_size(S, crop_pct))`` + ``CenterCrop(S)`` on the PIL
  decode of the same shard bytes (the ``folder`` backend's eval transform): the mean, 99th percentile and
  maximum over images of the per-image mean |diff| (0..255); also the ``folder`` backend's
  ``Resize(round(S / crop_pct))`` where that differs;
* with ``--agreement-epochs N``: a small ResNet-18 (``torchvision.models.resnet18``, random init, one class per
  wnid) trained for N epochs on RandomResizedCrop + flip of the same images at ``--agreement-size`` (it memorises
  them: the "labels" make only a train-set accuracy), then evaluated once on each pipeline's val pixels: top-1
  against the labels and the share of images whose top-1 equals the prediction on torchvision's pixels.

Run: ``.venv/bin/python -m benchmarks.eval_crop_agreement [--sizes 224,97] [--agreement-epochs 40] [--json F]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import DEFAULT_SAMPLES, shard_sample_tree
from pipeline.compat import zip_strict
from pipeline.backends import LoaderConfig, LoaderKind, Split, build_loader
from pipeline.read.info import load_info
from pipeline.read.transforms import CROP_PCT, eval_resize_size

CPU = torch.device("cpu")
KINDS = ("cpu", "nvjpeg", "dali")


def shard_samples(samples: Path, out: Path) -> Path:
    """Every ``*.JPEG`` of ``samples`` into ``out/tree/{train,val}/<wnid>/`` (links), sharded into ``out/shards``."""
    files = sorted(f for f in Path(samples).iterdir() if f.suffix == ".JPEG")
    if not files:
        raise SystemExit(f"{samples}: no .JPEG files")
    for f in files:
        for split in ("train", "val"):
            d = out / "tree" / split / f.name[:9]
            d.mkdir(parents=True, exist_ok=True)
            os.symlink(f.resolve(), d / f.name)
    return shard_sample_tree(out / "tree", out / "shards", workers=min(4, os.cpu_count() or 1), shard_size=1000)


def shard_images(info) -> dict[str, tuple[Image.Image, int]]:
    """key → (PIL RGB image of the shard's JPEG, class index), for the val split."""
    import webdataset as wds

    out = {}
    for sample in wds.WebDataset(info.shard_paths("val"), shardshuffle=False):
        out[sample["__key__"]] = (Image.open(io.BytesIO(sample["jpg"])).convert("RGB"), int(sample["cls"]))
    return out


def torchvision_pixels(images: dict, size: int, resize: int) -> dict[str, torch.Tensor]:
    """key → ``3×S×S`` uint8 of torchvision's ``Resize(resize)`` + ``CenterCrop(size)`` (PIL, bilinear)."""
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(size), transforms.PILToTensor()])
    return {k: tf(img) for k, (img, _) in images.items()}


def loader_pixels(kind: str, info, size: int, crop_pct: float, order: list[str]) -> dict[str, torch.Tensor]:
    """key → ``3×S×S`` uint8 of backend ``kind``'s val pipeline (on the CPU, not normalised). A backend that
    yields no keys (``dali``) yields one rank's val images in shard order: ``order``."""
    cfg = LoaderConfig(batch_size=50, image_size=size, workers=1, normalize=False, crop_pct=crop_pct)
    loader = build_loader(LoaderKind(kind), cfg, Split.VAL, info, CPU)
    try:
        batches = list(loader)
        keys = [k for b in batches for k in b.keys] or order
        return dict(zip_strict(keys, (img for b in batches for img in b.images)))
    finally:
        close = getattr(loader, "close", None)
        if close is not None:
            close()


def diff_stats(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-image mean |diff| (0..255) over the keys of ``ref``: mean, 99th percentile and max over images."""
    d = np.array([float((ours[k].float() - ref[k].float()).abs().mean()) for k in ref])
    return {"mean": round(float(d.mean()), 4), "p99": round(float(np.percentile(d, 99)), 4),
            "max": round(float(d.max()), 4), "images": len(d)}


def pipelines(info, images: dict, size: int, crop_pct: float, kinds) -> dict[str, dict[str, torch.Tensor]]:
    """name → key → pixels: ``torchvision`` (the reference), ``folder-round`` (where it differs) and each kind
    that can be built here (a kind that cannot is named on stderr and left out)."""
    ref_resize = eval_resize_size(size, crop_pct)
    out = {"torchvision": torchvision_pixels(images, size, ref_resize)}
    if round(size / crop_pct) != ref_resize:
        out["folder-round"] = torchvision_pixels(images, size, round(size / crop_pct))
    for kind in kinds:
        try:
            out[kind] = loader_pixels(kind, info, size, crop_pct, list(images))
        except (ValueError, RuntimeError) as exc:
            print(f"{kind}: left out ({str(exc).splitlines()[0][:160]})", file=sys.stderr)
    return out


def train_probe(images: dict, size: int, epochs: int, seed: int = 0) -> torch.nn.Module:
    """ResNet-18 (random init, one class per label) trained ``epochs`` epochs on RandomResizedCrop(size) + flip
    of ``images`` (SGD, cosine LR, label smoothing 0.1); returned in eval mode."""
    from torchvision import models, transforms

    torch.manual_seed(seed)
    labels = sorted({c for _, c in images.values()})
    index = {c: i for i, c in enumerate(labels)}
    small = [(img.resize((max(1, round(img.width * 2 * size / min(img.size))),
                          max(1, round(img.height * 2 * size / min(img.size)))), Image.Resampling.BILINEAR),
              index[c]) for img, c in images.values()]  # short side 2·size: RRC at a fraction of the cost
    tf = transforms.Compose([transforms.RandomResizedCrop(size, scale=(0.25, 1.0)), transforms.RandomHorizontalFlip(),
                             transforms.PILToTensor()])
    model = models.resnet18(num_classes=len(labels)).to(memory_format=torch.channels_last)
    steps = epochs * -(-len(small) // 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.4, momentum=0.9, weight_decay=5e-5, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.4, total_steps=steps, pct_start=0.15)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    rng = random.Random(seed)
    for _ in range(epochs):
        rng.shuffle(small)
        for i in range(0, len(small), 64):
            chunk = small[i:i + 64]
            x = normalise(torch.stack([tf(img) for img, _ in chunk]))
            loss = loss_fn(model(x), torch.tensor([c for _, c in chunk]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.index = index
    return model.eval()


def probe_model(images: dict, size: int, epochs: int, path: Path | None) -> torch.nn.Module:
    """:func:`train_probe`'s model, loaded from ``path`` when it exists (so runs of other code versions evaluate
    the same model), else trained and, with ``path``, saved there."""
    if path is not None and path.exists():
        from torchvision import models

        saved = torch.load(path, weights_only=True)
        model = models.resnet18(num_classes=len(saved["index"])).to(memory_format=torch.channels_last)
        model.load_state_dict(saved["state"])
        model.index = saved["index"]
        return model.eval()
    model = train_probe(images, size, epochs)
    if path is not None:
        torch.save({"state": model.state_dict(), "index": model.index}, path)
    return model


def normalise(x: torch.Tensor) -> torch.Tensor:
    """``N×3×H×W`` uint8 → ImageNet-normalised float32, channels-last."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    return ((x.float() - mean) / std).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def probabilities(model: torch.nn.Module, pixels: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    """``N×classes`` softmax of ``model`` on ``pixels[k]`` for ``k`` in ``keys``."""
    return torch.cat([model(normalise(torch.stack([pixels[k] for k in keys[i:i + 100]]))).softmax(1)
                      for i in range(0, len(keys), 100)])


def agreement(model, images: dict, by_name: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, float]]:
    """name → top-1 (against the labels), the share of top-1 predictions equal to those on torchvision's pixels,
    and the mean total-variation distance between the two softmax outputs (0: the same, 1: disjoint)."""
    keys = sorted(by_name["torchvision"])
    labels = torch.tensor([model.index[images[k][1]] for k in keys])
    probs = {name: probabilities(model, pix, keys) for name, pix in by_name.items()}
    ref = probs["torchvision"]
    out = {}
    for name, p in probs.items():
        same = p.argmax(1) == ref.argmax(1)
        out[name] = {"top1": round(float((p.argmax(1) == labels).float().mean()), 4),
                     "agree_with_torchvision": round(float(same.float().mean()), 4), "differ": int((~same).sum()),
                     "mean_tv_distance": round(float(0.5 * (p - ref).abs().sum(1).mean()), 5)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES)
    ap.add_argument("--sizes", default="224,97", help="comma-separated image sizes for the pixel comparison")
    ap.add_argument("--crop-pct", type=float, default=CROP_PCT)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--agreement-epochs", type=int, default=0, help="train the probe model this long (0: skip)")
    ap.add_argument("--agreement-size", type=int, default=64)
    ap.add_argument("--probe-checkpoint", type=Path,
                    help="load the probe model from here if the file exists, else save it here after training")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    result: dict = {"pixels": {}, "agreement": None}
    with tempfile.TemporaryDirectory() as tmp:
        info = load_info(shard_samples(args.samples, Path(tmp)))
        images = shard_images(info)
        for size in [int(s) for s in args.sizes.split(",") if s]:
            by_name = pipelines(info, images, size, args.crop_pct, kinds)
            result["pixels"][size] = {n: diff_stats(p, by_name["torchvision"]) for n, p in by_name.items()
                                      if n != "torchvision"}
            for name, stats in result["pixels"][size].items():
                print(f"{size:4d} px  {name:13s} vs torchvision: mean {stats['mean']:.3f}  p99 {stats['p99']:.3f}  "
                      f"max {stats['max']:.3f}  (/255, {stats['images']} images)")
        if args.agreement_epochs > 0:
            t0 = time.perf_counter()
            model = probe_model(images, args.agreement_size, args.agreement_epochs, args.probe_checkpoint)
            by_name = pipelines(info, images, args.agreement_size, args.crop_pct, kinds)
            result["agreement"] = {"size": args.agreement_size, "epochs": args.agreement_epochs,
                                   "train_s": round(time.perf_counter() - t0, 1),
                                   "by_pipeline": agreement(model, images, by_name)}
            for name, a in result["agreement"]["by_pipeline"].items():
                print(f"{args.agreement_size:4d} px  {name:13s} top-1 {a['top1']:.4f}  agrees with torchvision on "
                      f"{a['agree_with_torchvision']:.4f} ({a['differ']} differ), softmax TV distance "
                      f"{a['mean_tv_distance']:.5f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
