"""``flagperf-sweep --data SHARDS --out DIR [--nproc N] [--precisions fp32,amp,fp16] [-- TRAIN_FLAGS...]``.

Runs the FlagPerf presets of ``configs/flagperf`` that fit this machine, one ``train`` run each (through
torchrun when a run has more than one process), then writes the vendor page of all of them with
``flagperf-report`` (``DIR/README.md``, and the metrics JSONs ``DIR/<preset>.json`` beside it).

What fits: the 1x1 presets always run on one process; the single-node multi-card presets (1x8) run on
``min(8, --nproc)`` processes when ``--nproc`` > 1 (``--nproc`` defaults to the GPU count, else 1), and their
row says what ran (``1x2`` on 2 processes); two-node presets (2x8) need a second machine and are listed as
skipped (docs/launch.md starts them on each node). Flags after ``--`` go to every ``train`` run after the
preset (they override it: e.g. ``-- --max-steps 100 --no-eval`` for a short sweep). A run that fails is named
with its exit code and log file; the report covers the runs that finished, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "configs" / "flagperf"
_NAME = re.compile(r"resnet50_(\d+)x(\d+)_(\w+)\.toml")


@dataclass(frozen=True)
class SweepRun:
    """One preset as it runs here: ``procs`` processes on one node (``None``: does not fit, ``why``)."""

    preset: Path
    nodes: int
    per_node: int
    precision: str
    procs: int | None
    why: str = ""

    @property
    def name(self) -> str:
        return self.preset.stem


def plan(presets: Path, nproc: int, precisions: tuple[str, ...] | None) -> list[SweepRun]:
    """The presets in ``presets`` (``resnet50_<nodes>x<cards>_<precision>.toml``) with how each runs here."""
    runs = []
    for path in sorted(presets.glob("resnet50_*x*_*.toml")):
        m = _NAME.fullmatch(path.name)
        if m is None:
            continue
        nodes, per_node, precision = int(m[1]), int(m[2]), m[3]
        if precisions is not None and precision not in precisions:
            continue
        if nodes > 1:
            procs, why = None, f"needs {nodes} nodes: start it on each node (docs/launch.md)"
        elif per_node == 1:
            procs, why = 1, ""
        elif nproc > 1:
            procs, why = min(per_node, nproc), ""
        else:
            procs, why = None, f"needs {per_node} processes, --nproc is 1"
        runs.append(SweepRun(path, nodes, per_node, precision, procs, why))
    return runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(run: SweepRun, data: Path, metrics: Path, extra: list[str]) -> list[str]:
    """The command line of one run: ``python -m tools.train`` directly, or under torchrun for > 1 process."""
    train = ["-m", "tools.train", "--config", str(run.preset), "--data", str(data), "--metrics-json", str(metrics),
             *extra]
    if run.procs == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(run.procs),
            "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *train]


def execute(run: SweepRun, data: Path, out: Path, extra: list[str]) -> Path | None:
    """Run one preset, its output in ``out/<preset>.log``; the metrics JSON's path, or None when it failed."""
    metrics, log = out / f"{run.name}.json", out / f"{run.name}.log"
    print(f"flagperf-sweep: {run.name} on {run.procs} process(es) ...", flush=True)
    with open(log, "w") as f:
        rc = subprocess.run(train_command(run, data, metrics, extra), cwd=REPO, stdout=f,
                            stderr=subprocess.STDOUT).returncode
    if rc != 0 or not metrics.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        print(f"flagperf-sweep: {run.name} failed (exit {rc}): {tail[0]} (log: {log})", flush=True)
        return None
    return metrics


def _precisions(text: str) -> tuple[str, ...]:
    return tuple(p for p in text.split(",") if p)


def build_parser() -> argparse.ArgumentParser:
    import torch

    p = argparse.ArgumentParser(prog="flagperf-sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="shard folder (shard-imagenet's --out)")
    p.add_argument("--out", type=Path, required=True, help="folder for the metrics JSONs, logs and README.md")
    p.add_argument("--nproc", type=int, default=max(1, torch.cuda.device_count()),
                   help="processes (GPUs) this node gives a run (default: the GPU count, else 1)")
    p.add_argument("--precisions", type=_precisions, help="only these precisions, e.g. fp32,amp (default: all)")
    p.add_argument("--presets", type=Path, default=PRESETS, help="preset folder (default: configs/flagperf)")
    p.add_argument("--lang", choices=["zh", "en"], default="zh", help="page language (default: %(default)s)")
    p.add_argument("--device-name", help="short device name for the page (flagperf-report --device-name)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    p = build_parser()
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.nproc < 1:
        p.error("--nproc must be >= 1")
    if not (args.data / "_info.json").is_file():
        p.error(f"--data {args.data}: no _info.json; make shards with shard-imagenet first")
    runs = plan(args.presets, args.nproc, args.precisions)
    if not any(r.procs for r in runs):
        p.error(f"no preset of {args.presets} fits (--nproc {args.nproc}, --precisions {args.precisions})")
    args.out.mkdir(parents=True, exist_ok=True)
    done, failed = [], []
    for run in runs:
        if run.procs is None:
            print(f"flagperf-sweep: {run.name} skipped: {run.why}")
            continue
        metrics = execute(run, args.data, args.out, extra)
        (done if metrics else failed).append(metrics or run.name)
    if done:
        from tools import flagperf_report

        flags = [*map(str, done), "--out", str(args.out / "README.md"), "--lang", args.lang]
        flagperf_report.main(flags + (["--device-name", args.device_name] if args.device_name else []))
    print(f"flagperf-sweep: {len(done)} run(s) finished, {len(failed)} failed"
          + (f" ({', '.join(failed)})" if failed else ""))
    return 1 if failed or not done else 0


if __name__ == "__main__":
    sys.exit(main())
