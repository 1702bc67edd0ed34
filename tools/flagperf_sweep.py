"""``flagperf-sweep --data SHARDS --out DIR [--presets NAMES] [--precisions fp32,...] [--nproc N] [-- TRAIN_FLAGS...]``.

Runs FlagPerf's ResNet50 configs from the presets packaged with ``train`` (``train/presets/flagperf/<Name>.toml``,
FlagPerf's names: A100x1x1, A100x1x8, A100x2x8, C500x1x1, C500x1x8, C500x2x8, C550x1x8), once per precision,
one ``train`` run each (through torchrun when a run has more than one process), then writes the vendor page of all
of them with ``flagperf-report`` (``DIR/README.md``; each run's metrics JSON ``DIR/<preset>_<precision>.json`` and
its log ``.log`` beside it).

Which presets: ``--presets`` names them, by name or prefix, comma-separated (``--presets C500`` = C500x1x1,
C500x1x8, C500x2x8; ``--presets A100x1x8,A100x1x1``); by default those of the visible accelerator's vendor (NVIDIA:
the A100 configs, MetaX: the C500 / C550 ones), else all. ``--precisions`` (default ``fp32``, FlagPerf's default
run) overrides each preset's precision: ``fp16`` is FlagPerf's 16-bit run (its bfloat16 cast), ``amp`` its float16
autocast.

What fits: a 1-card preset (x1x1) runs on one process; a single-node multi-card preset (x1x8) on ``min(8, --nproc)``
processes when ``--nproc`` > 1 (``--nproc`` defaults to the GPU count, else 1), its row saying what ran (``1x2`` on 2
processes); a two-node preset (x2x8) needs a second machine and is listed as skipped (docs/launch.md starts it on
each node). Flags after ``--`` go to every ``train`` run after the preset's and the precision (they override them:
e.g. ``-- --max-steps 100 --no-eval`` for a short sweep).

Paths: the runs start in the caller's working directory; ``--data`` and ``--out`` are made absolute first, so
relative paths mean what they mean where the sweep was started, installed or run from a checkout. A run that fails
is named with its exit code, its real last error line (:func:`failure_line`: the ``train`` command's own one-line
error, else the last line that is not torchrun's decoration) and its log file; the report covers the runs that
finished, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tools.cli_common import Parser
from tools.config_file import presets

_LAYOUT = re.compile(r"x(\d+)x(\d+)$")  # FlagPerf's name: <device>x<nodes>x<cards per node>


@dataclass(frozen=True)
class SweepRun:
    """One preset at one precision as it runs here: ``procs`` processes on one node (``None``: does not fit,
    ``why``).

    Attributes:
        preset: FlagPerf's config name (``C500x1x8``); path: its TOML file.
        precision: the ``--precision`` the run is given.
        nodes / per_node: the layout the config is for.
    """

    preset: str
    path: Path
    precision: str
    nodes: int
    per_node: int
    procs: int | None
    why: str = ""

    @property
    def name(self) -> str:
        """The run's file stem in ``--out``: ``C500x1x8_fp32``."""
        return f"{self.preset}_{self.precision}"


def flagperf_presets(root: Path | None = None) -> dict[str, Path]:
    """FlagPerf's packaged presets by name (``C500x1x8`` -> its TOML), in :data:`train.flagperf_case.CONFIGS`
    order, any other after them by name. ``root``: the presets folder (default: the ``train`` package's)."""
    from train.flagperf_case import CONFIGS

    found = {name: path for name, path in presets(root).items() if "/" not in name}
    order = {name: i for i, name in enumerate(CONFIGS)}
    return {name: found[name] for name in sorted(found, key=lambda n: (order.get(n, len(order)), n))}


def layout(name: str) -> tuple[int, int]:
    """(nodes, cards per node) of a FlagPerf config name (``C500x2x8`` -> (2, 8)).

    Raises:
        ValueError: a name that does not end in ``x<nodes>x<cards>``.
    """
    from train.flagperf_case import CONFIGS

    if name in CONFIGS:
        return CONFIGS[name].nodes, CONFIGS[name].per_node
    match = _LAYOUT.search(name)
    if match is None:
        raise ValueError(f"preset {name}: its name does not end in x<nodes>x<cards per node>")
    return int(match[1]), int(match[2])


def select(known: list[str], tokens: list[str]) -> list[str]:
    """The names of ``known`` that equal or start with one of ``tokens`` (case-insensitive), in ``known``'s order.

    Raises:
        ValueError: a token that matches none (the message lists the known names).
    """
    chosen = set()
    for token in tokens:
        hits = [n for n in known if n.lower().startswith(token.lower())]
        if not hits:
            raise ValueError(f"--presets {token}: no FlagPerf preset of that name or prefix (known: "
                             f"{', '.join(known)})")
        chosen.update(hits)
    return [n for n in known if n in chosen]


def local_vendor() -> str | None:
    """FlagPerf's vendor folder of the visible accelerator (``nvidia``, ``metax``), told without starting CUDA in
    this process (the runs need the devices), or None: no accelerator, or another vendor."""
    import torch

    from train.accelerator import Vendor, nvidia_driver_visible, vendor_hint

    if torch.cuda.device_count() < 1:
        return None
    hint = vendor_hint()
    if hint is Vendor.METAX:
        return "metax"
    if hint is None and nvidia_driver_visible():
        return "nvidia"
    return None


def of_vendor(known: list[str], vendor: str | None) -> list[str]:
    """The presets of FlagPerf's ``vendor`` (all of them for None, or when the vendor has none)."""
    from train.flagperf_case import CONFIGS

    mine = [n for n in known if n in CONFIGS and CONFIGS[n].vendor is not None and CONFIGS[n].vendor.value == vendor]
    return mine or list(known)


def plan(chosen: dict[str, Path], precisions: tuple[str, ...], nproc: int) -> list[SweepRun]:
    """Each preset of ``chosen`` (name -> TOML) at each precision, with how it runs on ``nproc`` processes."""
    runs = []
    for name, path in chosen.items():
        nodes, per_node = layout(name)
        if nodes > 1:
            procs, why = None, f"needs {nodes} nodes: start it on each node (docs/launch.md)"
        elif per_node == 1:
            procs, why = 1, ""
        elif nproc > 1:
            procs, why = min(per_node, nproc), ""
        else:
            procs, why = None, f"needs {per_node} processes, --nproc is 1"
        runs += [SweepRun(name, path, precision, nodes, per_node, procs, why) for precision in precisions]
    return runs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_command(run: SweepRun, data: Path, metrics: Path, extra: list[str]) -> list[str]:
    """The command line of one run: ``python -m tools.train`` directly, or under torchrun for > 1 process; the
    preset, data and metrics as absolute paths (relative ones against this process's working directory)."""
    train = ["-m", "tools.train", "--config", os.path.abspath(run.path), "--precision", run.precision,
             "--data", os.path.abspath(data), "--metrics-json", os.path.abspath(metrics), *extra]
    if run.procs == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(run.procs),
            "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *train]


def package_root() -> Path:
    """The folder that holds the ``tools`` package this module was imported from (a checkout, site-packages, or a
    ``pip install --target`` folder)."""
    return Path(__file__).resolve().parent.parent


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``train`` run: ``env`` (default: this process's) with :func:`package_root` put first
    on ``PYTHONPATH`` where a new interpreter would not find ``tools`` there otherwise (a checkout that is not
    installed: ``sys.path[0]`` of this process is its own start folder, not the run's); an installed package is
    left as it is (site-packages first on PYTHONPATH could shadow the standard library)."""
    env = dict(os.environ if env is None else env)
    root = package_root()

    def same(entry: str) -> bool:
        try:
            return bool(entry) and Path(entry).resolve() == root
        except OSError:
            return False

    if any(same(p) for p in sys.path[1:]):  # [0] is where this process started; the run starts elsewhere
        return env
    entries = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if not any(same(p) for p in entries):
        env["PYTHONPATH"] = os.pathsep.join([str(root), *entries])
    return env


_RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d+\]:\s?")
_DECORATION = re.compile(
    r"^(\s*$"                                   # blank
    r"|[=*-]{3,}\s*$"                           # torchrun's ===== / ***** / ----- rules
    r"|Setting OMP_NUM_THREADS environment"     # torchrun's start banner
    r"|\[[WIEF][\w :.,/-]*\]"                   # c10d / glog-style [W socket.cpp:...] lines
    r"|[WIEF]\d{4} \d\d:\d\d:\d\d"              # torch's logger: W1201 12:00:00.123 ... run.py:...]
    r"|(WARNING|INFO|ERROR):torch\."            # older torchrun's logging lines
    r"|Traceback \(most recent call last\)"
    r"|.*ChildFailedError"
    r"|Root Cause|Failures:|<NO_OTHER_FAILURES>"
    r"|\s+(time|host|rank|exitcode|error_file|traceback)\s*:"
    r"|\s*\^[\^~ ]*$"                           # a traceback's caret line
    r"|\s+File \"|\s{4}"                        # traceback frames and their code lines
    r"|\[\d+\]:\s*$"
    r")")

_SIGNAL = re.compile(r"\s+traceback\s*:\s*(Signal \d+.*)$")


def failure_line(log: str) -> str:
    """The line that says why a run failed, from its captured output (stdout and stderr, torchrun's included):
    the ``train`` command's own one-line error (the last ``train: error:`` line, a ``[rankN]:`` prefix removed),
    else the last line that is not torchrun's decoration (its ``=====`` summary block, ``[W ...]`` / logger lines,
    its own traceback and ``ChildFailedError``, a traceback's frames, blank lines), i.e. a worker's exception
    line; where torchrun's root cause is a signal (``Signal 9 (SIGKILL) received by PID ...``: a worker killed),
    that; ``"no output"`` for an empty log, ``"no error line in its output"`` for one of decoration only."""
    lines = [_RANK_PREFIX.sub("", line.rstrip()) for line in log.splitlines()]
    errors = [line for line in lines if line.startswith("train: error:")]
    if errors:
        return errors[-1]
    failed = next((i for i, line in enumerate(lines) if "ChildFailedError" in line), None)
    if failed is not None:  # drop torchrun's own traceback, which ends in ChildFailedError
        root = next((i for i in range(failed, len(lines)) if lines[i].startswith("Root Cause")), len(lines))
        signal = next((m[1] for m in map(_SIGNAL.match, lines[root:]) if m), None)
        if signal is not None:  # the first rank to fail was killed (out of memory, a scheduler): no error of its own
            return signal
        start = max((i for i in range(failed) if lines[i].startswith("Traceback (most recent call last)")),
                    default=failed)
        lines = lines[:start]
    meaningful = [line for line in lines if not _DECORATION.match(line)]
    if meaningful:
        return meaningful[-1].strip()
    return "no error line in its output" if log.strip() else "no output"


def execute(run: SweepRun, data: Path, out: Path, extra: list[str], env: dict[str, str] | None = None
            ) -> Path | None:
    """Run one preset in this process's working directory, its output in ``out/<run>.log``; the metrics JSON's
    path, or None when it failed (its failure line printed)."""
    metrics, log = out / f"{run.name}.json", out / f"{run.name}.log"
    print(f"flagperf-sweep: {run.name} on {run.procs} process(es) ...", flush=True)
    with open(log, "w") as f:
        rc = subprocess.run(train_command(run, data, metrics, extra), stdout=f, stderr=subprocess.STDOUT,
                            env=child_env(env)).returncode
    if rc != 0 or not metrics.exists():
        why = failure_line(log.read_text(errors="replace"))
        if rc < 0:  # this process's child itself was killed (no torchrun to say so)
            why = f"killed by signal {-rc}; last line: {why}"
        print(f"flagperf-sweep: {run.name} failed (exit {rc}): {why} (log: {log})", flush=True)
        return None
    return metrics


def _names(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def build_parser() -> argparse.ArgumentParser:
    import torch

    parser = Parser(prog="flagperf-sweep", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="shard folder (shard-imagenet's --out)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the metrics JSONs, logs and README.md")
    parser.add_argument("--presets", type=_names, metavar="NAMES",
                        help="FlagPerf presets by name or prefix, comma-separated, e.g. C500 or A100x1x8,A100x1x1 "
                             "(default: those of the visible accelerator's vendor, else all)")
    parser.add_argument("--precisions", type=_names, default=("fp32",), metavar="LIST",
                        help="run each preset at these --precision values, e.g. fp32,amp,fp16 (default: fp32)")
    parser.add_argument("--nproc", type=int, default=max(1, torch.cuda.device_count()),
                        help="processes (GPUs) this node gives a run (default: the GPU count, else 1)")
    parser.add_argument("--lang", choices=["zh", "en"], default="zh", help="page language (default: %(default)s)")
    parser.add_argument("--device-name", help="short device name for the page (flagperf-report --device-name)")
    return parser


def _train_flag(extra: list[str], flag: str) -> str | None:
    """The value of ``flag`` among the train flags after ``--`` (the last one given), or None."""
    value = None
    for i, x in enumerate(extra):
        if x == flag and i + 1 < len(extra):
            value = extra[i + 1]
        elif x.startswith(flag + "="):
            value = x.split("=", 1)[1]
    return value


def _check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> None:
    """Refuse (exit 2) a bad ``--nproc`` or ``--precisions``, and a train flag after ``--`` the sweep sets itself."""
    from train.precision import Precision

    if args.nproc < 1:
        parser.error("--nproc must be >= 1")
    modes = [mode.value for mode in Precision]
    bad = [x for x in args.precisions if x not in modes]
    if bad or not args.precisions:
        parser.error(f"--precisions {','.join(args.precisions)}: unknown {', '.join(bad) or 'empty list'} (choose "
                     f"from {', '.join(modes)})")
    owned = [f for f in ("--metrics-json", "--config", "-c", "--data") for x in extra
             if x == f or x.startswith(f + "=") or (f == "-c" and x.startswith("-c") and not x.startswith("--"))]
    if owned:
        parser.error(f"{owned[0]} after --: the sweep sets it for every run (--data, DIR/<preset>_<precision>.json, "
                     f"the preset); drop it")


def _check_data(parser: argparse.ArgumentParser, given: Path, data: Path, extra: list[str]) -> None:
    """Refuse (exit 2) a ``--data`` (``given``; absolute: ``data``) that the runs' loader cannot read: an
    ImageFolder root for ``-- --loader folder``, else a shard folder with its ``_info.json``."""
    folder = _train_flag(extra, "--loader") == "folder"
    if folder and not ((data / "train").is_dir() and (data / "val").is_dir()):
        parser.error(f"--data {given}: --loader folder needs an ImageFolder root with train/ and val/ in {data}")
    if not folder and not (data / "_info.json").is_file():
        parser.error(f"--data {given}: no _info.json in {data}; make shards with shard-imagenet first (or pass "
                     f"-- --loader folder for an ImageFolder tree)")


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Path]:
    """The presets to run (name -> TOML): ``--presets``, else those of the visible accelerator's vendor (said)."""
    known = flagperf_presets()
    if not known:
        parser.error("no FlagPerf preset is installed (train/presets/flagperf/ is empty or missing)")
    if args.presets:
        try:
            names = select(list(known), list(args.presets))
        except ValueError as exc:
            parser.error(str(exc))
    else:
        vendor = local_vendor()
        names = of_vendor(list(known), vendor)
        print(f"flagperf-sweep: presets {', '.join(names)} "
              f"({'the visible ' + vendor + ' device' if vendor else 'all: no known accelerator vendor'})")
    return {name: known[name] for name in names}


def _run_all(runs: list[SweepRun], data: Path, out: Path, extra: list[str]) -> tuple[list[Path], list[str]]:
    """Each run that fits, one after another: (metrics JSONs of those that finished, names of those that failed)."""
    done, failed = [], []
    for run in runs:
        if run.procs is None:
            print(f"flagperf-sweep: {run.name} skipped: {run.why}")
            continue
        metrics = execute(run, data, out, extra)
        if metrics is None:
            failed.append(run.name)
        else:
            done.append(metrics)
    return done, failed


def main(argv: list[str] | None = None) -> int:
    """Parse, plan, run and report; returns the exit status (0: every planned run finished; 2: a usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = build_parser()
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    _check_flags(parser, args, extra)
    data, out = Path(os.path.abspath(args.data)), Path(os.path.abspath(args.out))
    _check_data(parser, args.data, data, extra)
    chosen = _chosen(parser, args)
    runs = plan(chosen, args.precisions, args.nproc)
    if not any(run.procs for run in runs):
        parser.error(f"no chosen preset fits this node ({', '.join(chosen)}; --nproc {args.nproc})")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out {args.out}: cannot make that folder ({exc.strerror or exc}); pick a writable path")
    done, failed = _run_all(runs, data, out, extra)
    if done:
        from tools import flagperf_report

        flags = [*map(str, done), "--out", str(out / "README.md"), "--lang", args.lang]
        flagperf_report.main(flags + (["--device-name", args.device_name] if args.device_name else []))
    print(f"flagperf-sweep: {len(done)} run(s) finished, {len(failed)} failed"
          + (f" ({', '.join(failed)})" if failed else ""))
    return 1 if failed or not done else 0


if __name__ == "__main__":
    sys.exit(main())
