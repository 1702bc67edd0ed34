"""io-bench report: ``report.md``, ``results.json`` and two PNG plots (matplotlib, no display needed).

* ``loader_vs_workers.png``: loader-only img/s against worker count, one line per backend (median, with the
  min-max spread as error bars), and the compute-only rate (p_core of the synthetic run) as a horizontal line;
* ``stages.png``: per-image milliseconds on one core, stacked by stage, one bar per backend.
"""

from __future__ import annotations

import json
from pathlib import Path

from train.iobench.run import IoBenchResult

STAGE_COLOURS = {"read": "#4c72b0", "decode": "#dd8452", "augment": "#55a868", "collate": "#c44e52",
                 "h2d copy": "#8172b3"}


def write_report(r: IoBenchResult, out: Path) -> Path:
    """Write results.json, the plots and report.md into ``out`` (created); returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(r.to_json(), indent=1) + "\n")
    plots = _plots(r, out)
    path = out / "report.md"
    path.write_text(render_markdown(r, plots))
    return path


def _stage_rows(r: IoBenchResult) -> dict[str, dict[str, float]]:
    rows = {}
    for kind, s in r.stages.items():
        row = dict(s.seconds_per_image)
        if r.h2d_seconds_per_image is not None:
            row["h2d copy"] = r.h2d_seconds_per_image
        rows[kind] = row
    return rows


def _plots(r: IoBenchResult, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    if r.sweep:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for kind, points in r.sweep.items():
            ws = sorted(points)
            med = [points[w].median for w in ws]
            lo = [points[w].median - min(points[w].samples) for w in ws]
            hi = [max(points[w].samples) - points[w].median for w in ws]
            ax.errorbar(ws, med, yerr=[lo, hi], marker="o", capsize=3, label=f"{kind} loader")
        if r.compute:
            ax.axhline(r.compute.p_core, color="black", linestyle="--",
                       label=f"compute (p_core {r.compute.p_core:.0f} img/s)")
        ax.set_xticks(sorted({w for pts in r.sweep.values() for w in pts}))
        ax.set_xlabel("loader workers (processes / DALI threads)")
        ax.set_ylabel("img/s")
        ax.set_title("loader-only throughput vs workers")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "loader_vs_workers.png", dpi=110)
        plt.close(fig)
        names.append("loader_vs_workers.png")
    rows = _stage_rows(r)
    if rows:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        kinds = list(rows)
        bottom = [0.0] * len(kinds)
        stages = [s for s in STAGE_COLOURS if any(s in rows[k] for k in kinds)]
        for stage in stages:
            ms = [1000 * rows[k].get(stage, 0.0) for k in kinds]
            ax.bar(kinds, ms, bottom=bottom, label=stage, color=STAGE_COLOURS[stage])
            bottom = [b + m for b, m in zip(bottom, ms)]
        ax.set_ylabel("ms per image, one core")
        ax.set_title("per-stage cost of each backend")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "stages.png", dpi=110)
        plt.close(fig)
        names.append("stages.png")
    return names


def _header(r: IoBenchResult) -> list[str]:
    c, m = r.config, r.machine
    return ["# io-bench report", "",
            f"Machine: {m.cpu_cores} CPU cores ({m.cpu}), device {m.device} ({m.device_name}), torch {m.torch}.",
            f"cpu backend {r.decode}.",
            f"Data: `{c.data}` ({c.train_samples} train samples); batch {c.batch_size}, {c.image_size} px, "
            f"precision {c.precision}; loader windows: {c.repeat} x {c.loader_batches} batches after "
            f"{c.warmup_batches} warm-up; training runs: {c.train_steps} steps after {c.warmup_steps} warm-up.", ""]


def _storage(r: IoBenchResult) -> list[str]:
    s = r.storage
    return ["## Storage", "",
            f"Sequential read of the train shards: {s.mb_per_s:.0f} MB/s = {s.img_per_s:.0f} img/s "
            f"({s.bytes / 1e6:.0f} MB, {'page cache dropped first' if s.cold else 'warm cache'}). {s.note}", ""]


def _stages(r: IoBenchResult, rows: dict[str, dict[str, float]]) -> list[str]:
    """The per-stage table (ms per image on one core), the backends' notes and the 1-worker check."""
    stages = [s for s in STAGE_COLOURS if any(s in row for row in rows.values())]
    lines = ["## Per-stage cost (ms per image, one core)", "",
             "| backend | " + " | ".join(stages) + " | total | img/s per core |", "|---" * (len(stages) + 3) + "|"]
    for kind, row in rows.items():
        total = sum(row.values())
        lines.append(f"| {kind} | " + " | ".join(f"{1000 * row.get(s, 0):.2f}" for s in stages) +
                     f" | {1000 * total:.2f} | {1 / total:.0f} |")
    notes = [s.note if s.note.startswith(f"{k}:") else f"{k}: {s.note}" for k, s in r.stages.items() if s.note]
    lines += [""] + [f"- {n}" for n in notes] + [""]
    if r.stage_fidelity:
        f = r.stage_fidelity
        lines += [f"Check: at 1 worker the cpu backend's stage times add up to {100 * f.ratio:.0f}% of the "
                  f"loader's wall time ({f.stage_sum_s:.2f} s of {f.wall_s:.2f} s).", ""]
    return lines


def _sweep(r: IoBenchResult) -> list[str]:
    ws = sorted({w for pts in r.sweep.values() for w in pts})
    lines = ["## Loader-only throughput (img/s, median [min-max])", "",
             "| backend | " + " | ".join(f"{w} worker{'s' if w > 1 else ''}" for w in ws) + " |",
             "|---" * (len(ws) + 1) + "|"]
    for kind, pts in r.sweep.items():
        cells = [f"{pts[w].median:.0f} [{min(pts[w].samples):.0f}-{max(pts[w].samples):.0f}]" if w in pts else "-"
                 for w in ws]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines + [""]


def _training(r: IoBenchResult) -> list[str]:
    lines = ["## Training step", "", "| run | p_train (img/s) | p_core (img/s) | data wait |", "|---|---|---|---|"]
    if r.compute:
        lines.append(f"| compute-only (synthetic) | {r.compute.p_train:.1f} | {r.compute.p_core:.1f} | - |")
    for kind, e in r.end_to_end.items():
        lines.append(f"| {kind} loader | {e.p_train:.1f} | {e.p_core:.1f} | {100 * e.data_wait_fraction:.0f}% |")
    return lines + [""]


def render_markdown(r: IoBenchResult, plots: list[str]) -> str:
    """The report as Markdown (what the README shows)."""
    lines = _header(r)
    if r.verdict:
        lines += ["## Verdict", ""] + [f"- {line}" for line in r.verdict.lines] + [""]
    if r.storage:
        lines += _storage(r)
    rows = _stage_rows(r)
    if rows:
        lines += _stages(r, rows)
    if r.sweep:
        lines += _sweep(r)
    if r.compute or r.end_to_end:
        lines += _training(r)
    if r.max_size_lever:
        x = r.max_size_lever
        lines += [f"Pre-resized shards: with `--max-size {x.max_size}` the mean decoded image would go from "
                  f"{x.mean_pixels / 1e3:.0f}k to {x.mean_pixels_after / 1e3:.0f}k pixels "
                  f"(extrapolated loader rate {x.rate:.0f} img/s).", ""]
    if r.skipped:
        lines += ["## Not measured", ""] + [f"- {k}: {why}" for k, why in r.skipped.items()] + [""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
