"""``flagperf-report RUN.json ... [--out README.md] [--lang zh|en] [--device-name NAME]``.

Writes the FlagPerf vendor page of the ResNet50 case (``training/<vendor>/resnet50-pytorch/README.md``; Chinese by
default, as FlagPerf's vendor pages are) from the metrics JSONs of any number of ``train --metrics-json`` runs:
数据集准备, the vendor section with 环境配置 (and the 数据格式 note for 16-bit runs), 运行情况 with 通用指标 (数据集
and 额外修改项 filled from the runs) and 性能指标 (one row per run from its ``flagperf`` figures, ordered by layout
and precision), and the notes under it. See train/flagperf_page/ for the layout, the rounding, fix_hp and what
额外修改项 compares. Without ``--out`` the page goes to stdout.

Exit status 2 with one line naming the file and the key for a file that is not a metrics JSON of train, a
``--test-only`` run, or one written before the ``flagperf`` figures existed (rerun train), and for an ``--out`` that
cannot be written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.cli_common import Parser
from train.flagperf_page import Lang, RunFileError, load_run, render


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="flagperf-report", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN.json",
                        help="metrics JSONs of train --metrics-json")
    parser.add_argument("--out", type=Path, help="write the page here (default: stdout)")
    parser.add_argument("--lang", choices=[lang.value for lang in Lang], default=Lang.ZH.value,
                        help="page language (default: %(default)s, as FlagPerf's vendor pages)")
    parser.add_argument("--device-name", help="short device name of the 配置 cells and 硬件设备简称, e.g. A100 "
                                              "(default: the device name the first run recorded)")
    return parser


# what a value that passed load_run's checks but still cannot be written raises (a hand-edited JSON)
_RENDER_ERRORS = (ArithmeticError, AttributeError, KeyError, LookupError, TypeError, ValueError)


def _render_or_exit(parser: argparse.ArgumentParser, runs: list, lang: Lang, device: str | None) -> str:
    """The page; where a JSON that load_run accepted still cannot be rendered, one line naming the first file
    that fails alone (exit 2), never a traceback."""
    try:
        return render(runs, lang, device)
    except _RENDER_ERRORS as exc:
        culprit = "these metrics JSONs"
        for run in runs:
            try:
                render([run], lang, device)
            except _RENDER_ERRORS:
                culprit = run.path
                break
        parser.exit(2, f"flagperf-report: error: {culprit}: cannot write the page from it "
                       f"({exc.__class__.__name__}: {exc}); a metrics JSON edited by hand or damaged? rerun train\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        runs = [load_run(path) for path in args.runs]
    except RunFileError as exc:
        parser.exit(2, f"flagperf-report: error: {exc}\n")
    page = _render_or_exit(parser, runs, Lang(args.lang), args.device_name)
    if args.out is None:
        sys.stdout.write(page)
        return 0
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(page, encoding="utf-8")
    except OSError as exc:
        parser.exit(2, f"flagperf-report: error: --out {args.out}: {exc.strerror or exc}\n")
    print(f"flagperf-report: wrote {args.out} ({len(runs)} run{'s' if len(runs) != 1 else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
