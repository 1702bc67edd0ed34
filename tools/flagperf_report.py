"""``flagperf-report RUN.json ... [--out README.md] [--lang zh|en] [--device-name NAME]``.

Writes the FlagPerf vendor README section of the ResNet50 case (环境配置, 通用指标, 性能指标; Chinese by default,
as FlagPerf's vendor pages are) from the metrics JSONs of any number of ``train --metrics-json`` runs: one
performance row per run, ordered 1x1, 1x8, 2x8 and by precision. See train/flagperf_page.py for the layout,
the rounding and what "unknown" means. Without ``--out`` the page goes to stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from train.flagperf_page import Lang, RunFileError, load_run, render


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flagperf-report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN.json", help="metrics JSONs of train --metrics-json")
    p.add_argument("--out", type=Path, help="write the page here (default: stdout)")
    p.add_argument("--lang", choices=[lang.value for lang in Lang], default=Lang.ZH.value,
                   help="page language (default: %(default)s, as FlagPerf's vendor pages)")
    p.add_argument("--device-name", help="short device name of the 配置 cells and 硬件设备简称, e.g. A100 "
                                         "(default: the device name the first run recorded)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        runs = [load_run(path) for path in args.runs]
    except RunFileError as exc:
        p.exit(2, f"flagperf-report: error: {exc}\n")
    page = render(runs, Lang(args.lang), args.device_name)
    if args.out is None:
        sys.stdout.write(page)
        return 0
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(page, encoding="utf-8")
    except OSError as exc:
        p.exit(2, f"flagperf-report: error: --out {args.out}: {exc.strerror or exc}\n")
    print(f"flagperf-report: wrote {args.out} ({len(runs)} run{'s' if len(runs) != 1 else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
