"""GPU check of the decode backends (issue 4): DALI mixed decode vs the cpu backend vs synthetic, one run each.

    python benchmarks/gpu_check_loaders.py [--samples DIR] [--steps 200] [--batch-size 256] [--precision amp]
                                           [--copies 16] [--out DIR]

Shards ``--samples`` (default ``../shared/data/imagenet-samples``; each image entered ``--copies`` times so that
an epoch holds many steps), then runs ``train`` (ResNet50, channels-last, ``--precision``, no eval) for
``--steps`` steps with ``--loader synthetic``, ``dali`` and ``cpu``, and prints p_core, p_train, the data-wait
share and the loader's img/s relative to synthetic (the compute ceiling). Each run's metrics JSON and log go
to ``--out``. On a machine without CUDA it still runs (fp32 on the CPU), which is how it is tested here with
tiny sizes; the figures that matter come from a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import DEFAULT_SAMPLES, sample_tree, shard_sample_tree  # noqa: E402

LOADERS = ("synthetic", "dali", "cpu")


def run_train(loader: str, shards: Path, args, out: Path) -> dict:
    """One ``train`` process; returns its metrics JSON (plus ``wall_s`` measured around it)."""
    metrics = out / f"{loader}.json"
    cmd = [sys.executable, "-m", "tools.train", "--data", str(shards), "--loader", loader,
           "--max-steps", str(args.steps), "--epochs", "1000", "--no-eval", "--batch-size", str(args.batch_size),
           "--image-size", str(args.image_size), "--precision", args.precision, "--metrics-json", str(metrics)]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out / f"{loader}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        return {"error": " | ".join(tail), "wall_s": wall}
    return {**json.loads(metrics.read_text()), "wall_s": wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--precision", default="amp", help="amp on CUDA (default); fp32 for a CPU trial")
    p.add_argument("--workers", type=int, help="decode workers / DALI threads (default: train's, all cores)")
    p.add_argument("--copies", type=int, default=16)
    p.add_argument("--loaders", default=",".join(LOADERS), help=f"comma list of {LOADERS}")
    p.add_argument("--out", type=Path, default=REPO / "build" / "gpu_check")
    args = p.parse_args()
    if not args.samples.is_dir():
        p.error(f"{args.samples}: not found; pass --samples DIR of <wnid>_<name>.JPEG files")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = sample_tree(args.samples, tmp / "tree", args.copies)
        shards = shard_sample_tree(tmp / "tree", tmp / "shards", os.cpu_count() or 1)
        for loader in args.loaders.split(","):
            results[loader] = run_train(loader, shards, args, args.out)
            print(f"{loader}: done in {results[loader]['wall_s']:.0f} s", flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"{len(files)} samples per epoch, {args.steps} steps x batch {args.batch_size}, {args.image_size} px, "
          f"{args.precision}, ResNet50 channels-last, no eval")
    base = results.get("synthetic", {}).get("p_train")
    print(f"{'loader':<10} {'p_core':>9} {'p_train':>9} {'data wait':>10} {'vs synthetic':>13}  device")
    for loader, r in results.items():
        if "error" in r:
            print(f"{loader:<10} failed: {r['error']}")
            continue
        rel = f"{r['p_train'] / base:.2f}x" if base else "-"
        print(f"{loader:<10} {r['p_core']:9.1f} {r['p_train']:9.1f} {100 * r['data_wait_fraction']:9.0f}% "
              f"{rel:>13}  {r.get('device_name', r.get('device'))}")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
