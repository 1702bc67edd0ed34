"""io-bench report: ``report.md``, ``results.json`` and two PNG plots (matplotlib, no display needed).

* ``loader_vs_workers.png``: loader-only img/s against worker count, one line per backend (median, with the
  min-max spread as error bars), and the compute-only rate (p_core of the synthetic run) as a horizontal line;
* ``stages.png``: per-image milliseconds on one core, stacked by stage (:class:`pipeline.backends.StageSeconds`,
  the host→device copy on top where it was measured), one bar per backend.

:func:`write_report` writes them all; :func:`render_markdown` is the report's text.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType

from pipeline.backends import H2D_COPY, StageSeconds
from train.iobench.results import IoBenchResult

# a stage's colour in stages.png, by its display name (StageSeconds.items)
STAGE_COLOURS = MappingProxyType({"read": "#4c72b0", "decode": "#dd8452", "augment": "#55a868", "collate": "#c44e52",
                                  H2D_COPY: "#8172b3"})


def write_report(result: IoBenchResult, out: Path) -> Path:
    """Write results.json, the plots and report.md into ``out`` (created); returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result.to_json(), indent=1) + "\n")
    plots = _plots(result, out)
    path = out / "report.md"
    path.write_text(render_markdown(result, plots))
    return path


def _stage_rows(result: IoBenchResult) -> dict[str, StageSeconds]:
    """Backend → its seconds per image on one core (with the host→device copy where measured)."""
    return {kind: result.stage_seconds(kind) for kind in result.stages}


def _stage_names(result: IoBenchResult) -> list[str]:
    """The stages' display names in order, ``"h2d copy"`` last where the copy was measured."""
    return [name for name, _ in StageSeconds().items(with_h2d=result.h2d_measured)]


def _sweep_plot(result: IoBenchResult, out: Path, plt) -> str:
    """``loader_vs_workers.png``: the sweep's median img/s per backend with min-max error bars, and p_core."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for kind, points in result.sweep.items():
        ws = sorted(points)
        med = [points[w].median for w in ws]
        lo = [points[w].median - min(points[w].samples) for w in ws]
        hi = [max(points[w].samples) - points[w].median for w in ws]
        ax.errorbar(ws, med, yerr=[lo, hi], marker="o", capsize=3, label=f"{kind} loader")
    if result.compute:
        ax.axhline(result.compute.p_core, color="black", linestyle="--",
                   label=f"compute (p_core {result.compute.p_core:.0f} img/s)")
    ax.set_xticks(sorted({w for pts in result.sweep.values() for w in pts}))
    ax.set_xlabel("loader workers (processes / DALI threads)")
    ax.set_ylabel("img/s")
    ax.set_title("loader-only throughput vs workers")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loader_vs_workers.png", dpi=110)
    plt.close(fig)
    return "loader_vs_workers.png"


def _stages_plot(result: IoBenchResult, rows: dict[str, StageSeconds], out: Path, plt) -> str:
    """``stages.png``: ms per image on one core, one bar per backend stacked by stage."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    kinds = list(rows)
    bottom = [0.0] * len(kinds)
    # backend x stage, seconds per image
    table = [[seconds for _, seconds in rows[k].items(with_h2d=result.h2d_measured)] for k in kinds]
    for position, stage in enumerate(_stage_names(result)):
        ms = [1000 * seconds[position] for seconds in table]
        ax.bar(kinds, ms, bottom=bottom, label=stage, color=STAGE_COLOURS[stage])
        bottom = [b + m for b, m in zip(bottom, ms)]
    ax.set_ylabel("ms per image, one core")
    ax.set_title("per-stage cost of each backend")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "stages.png", dpi=110)
    plt.close(fig)
    return "stages.png"


def _plots(result: IoBenchResult, out: Path) -> list[str]:
    """Draw the plots there is data for into ``out``; their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    if result.sweep:
        names.append(_sweep_plot(result, out, plt))
    rows = _stage_rows(result)
    if rows:
        names.append(_stages_plot(result, rows, out, plt))
    return names


def _header(result: IoBenchResult) -> list[str]:
    settings, machine = result.config, result.machine
    return ["# io-bench report", "",
            f"Machine: {machine.cpu_cores} CPU cores ({machine.cpu}), device {machine.device} "
            f"({machine.device_name}), torch {machine.torch}.",
            f"cpu backend {result.decode}.",
            f"Data: `{settings.data}` ({settings.train_samples} train samples); batch {settings.batch_size}, "
            f"{settings.image_size} px, precision {settings.precision}; loader windows: {settings.repeat} x "
            f"{settings.loader_batches} batches after {settings.warmup_batches} warm-up; training runs: "
            f"{settings.train_steps} steps after {settings.warmup_steps} warm-up.", ""]


def _storage(result: IoBenchResult) -> list[str]:
    rate = result.storage
    return ["## Storage", "",
            f"Sequential read of the train shards: {rate.mb_per_s:.0f} MB/s = {rate.img_per_s:.0f} img/s "
            f"({rate.bytes / 1e6:.0f} MB, {'page cache dropped first' if rate.cold else 'warm cache'}). {rate.note}",
            ""]


def _stages(result: IoBenchResult, rows: dict[str, StageSeconds]) -> list[str]:
    """The per-stage table (ms per image on one core), the backends' notes and the 1-worker check."""
    stages = _stage_names(result)
    lines = ["## Per-stage cost (ms per image, one core)", "",
             "| backend | " + " | ".join(stages) + " | total | img/s per core |", "|---" * (len(stages) + 3) + "|"]
    for kind, row in rows.items():
        cells = [f"{1000 * seconds:.2f}" for _, seconds in row.items(with_h2d=result.h2d_measured)]
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {1000 * row.total:.2f} | {1 / row.total:.0f} |")
    notes = [costs.note if costs.note.startswith(f"{kind}:") else f"{kind}: {costs.note}"
             for kind, costs in result.stages.items() if costs.note]
    lines += [""] + [f"- {n}" for n in notes] + [""]
    if result.stage_fidelity:
        fidelity = result.stage_fidelity
        lines += [f"Check: at 1 worker the cpu backend's stage times add up to {100 * fidelity.ratio:.0f}% of the "
                  f"loader's wall time ({fidelity.stage_sum_s:.2f} s of {fidelity.wall_s:.2f} s).", ""]
    return lines


def _sweep(result: IoBenchResult) -> list[str]:
    ws = sorted({w for pts in result.sweep.values() for w in pts})
    lines = ["## Loader-only throughput (img/s, median [min-max])", "",
             "| backend | " + " | ".join(f"{w} worker{'s' if w > 1 else ''}" for w in ws) + " |",
             "|---" * (len(ws) + 1) + "|"]
    for kind, pts in result.sweep.items():
        cells = [f"{pts[w].median:.0f} [{min(pts[w].samples):.0f}-{max(pts[w].samples):.0f}]" if w in pts else "-"
                 for w in ws]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines + [""]


def _training(result: IoBenchResult) -> list[str]:
    lines = ["## Training step", "", "| run | p_train (img/s) | p_core (img/s) | data wait |", "|---|---|---|---|"]
    if result.compute:
        lines.append(f"| compute-only (synthetic) | {result.compute.p_train:.1f} | {result.compute.p_core:.1f} | - |")
    for kind, run in result.end_to_end.items():
        lines.append(f"| {kind} loader | {run.p_train:.1f} | {run.p_core:.1f} | {100 * run.data_wait_fraction:.0f}% |")
    return lines + [""]


def render_markdown(result: IoBenchResult, plots: list[str]) -> str:
    """The report as Markdown (what the README shows)."""
    lines = _header(result)
    if result.verdict:
        lines += ["## Verdict", ""] + [f"- {line}" for line in result.verdict.lines] + [""]
    if result.storage:
        lines += _storage(result)
    rows = _stage_rows(result)
    if rows:
        lines += _stages(result, rows)
    if result.sweep:
        lines += _sweep(result)
    if result.compute or result.end_to_end:
        lines += _training(result)
    if result.max_size_lever:
        lever = result.max_size_lever
        lines += [f"Pre-resized shards: with `--max-size {lever.max_size}` the mean decoded image would go from "
                  f"{lever.mean_pixels / 1e3:.0f}k to {lever.mean_pixels_after / 1e3:.0f}k pixels "
                  f"(extrapolated loader rate {lever.rate:.0f} img/s).", ""]
    if result.skipped:
        lines += ["## Not measured", ""] + [f"- {k}: {why}" for k, why in result.skipped.items()] + [""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
