"""GPU check of the training step (issue 6): synthetic p_core for fp32 / amp / bf16 x channels-last on/off x
torch.compile on/off, ResNet50 at batch 256, 224 px.

    python benchmarks/gpu_check_precision.py [--steps 60] [--warmup 20] [--batch-size 256] [--out DIR]
                                             [--precisions fp32,amp,bf16] [--no-compile]

Each cell is one ``train --loader synthetic --no-eval`` process (so each starts from a fresh CUDA context and
allocator), ``--warmup`` steps left out of p_core (compile time falls there), then ``--steps`` measured. Prints
a table of p_core (img/s) and peak reserved memory; writes results.json and the logs to ``--out``. Without CUDA
it runs on the CPU (tested here with tiny sizes); the figures that matter come from a GPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_cell(precision: str, channels_last: bool, compile_: bool, args, out: Path) -> dict:
    name = f"{precision}-{'cl' if channels_last else 'nchw'}-{'compile' if compile_ else 'eager'}"
    metrics = out / f"{name}.json"
    cmd = [sys.executable, "-m", "tools.train", "--loader", "synthetic", "--no-eval", "--epochs", "1000",
           "--synthetic-train-samples", str(10 ** 7), "--batch-size", str(args.batch_size),
           "--image-size", str(args.image_size), "--precision", precision, "--max-steps",
           str(args.warmup + args.steps), "--warmup-steps", str(args.warmup), "--workers", "0",
           "--metrics-json", str(metrics)]
    cmd += [] if channels_last else ["--no-channels-last"]
    cmd += ["--compile"] if compile_ else []
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
    cell = {"name": name, "precision": precision, "channels_last": channels_last, "compile": compile_,
            "wall_s": time.perf_counter() - t0}
    if proc.returncode != 0:
        cell["error"] = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-2:])
        return cell
    m = json.loads(metrics.read_text())
    cell.update(p_core=m["p_core"], p_train=m["p_train"], mem=m["mem"], device=m["device_name"],
                warmup_s=m.get("warmup_s_rank0"))
    return cell


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--precisions", default="fp32,amp,bf16")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile cells")
    p.add_argument("--out", type=Path, default=REPO / "build" / "gpu_check_precision")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cells = []
    for precision, cl, comp in itertools.product(args.precisions.split(","), (True, False),
                                                 (False,) if args.no_compile else (False, True)):
        cells.append(run_cell(precision, cl, comp, args, args.out))
        c = cells[-1]
        print(f"{c['name']:<22} " + (f"p_core {c['p_core']:8.1f} img/s  mem {c['mem']}  ({c['wall_s']:.0f} s)"
                                     if "error" not in c else f"failed: {c['error']}"), flush=True)
    (args.out / "results.json").write_text(json.dumps(cells, indent=1) + "\n")
    ok = [c for c in cells if "error" not in c]
    if ok:
        print(f"\nResNet50 synthetic, batch {args.batch_size}, {args.image_size} px, {args.steps} steps after "
              f"{args.warmup} warm-up, {ok[0]['device']}")
        print("| precision | memory format | compile | p_core (img/s) | mem (GiB) |\n|---|---|---|---|---|")
        for c in ok:
            print(f"| {c['precision']} | {'channels-last' if c['channels_last'] else 'NCHW'} | "
                  f"{'yes' if c['compile'] else 'no'} | {c['p_core']:.1f} | {c['mem']} |")
    return 0 if len(ok) == len(cells) else 1


if __name__ == "__main__":
    sys.exit(main())
