"""From io-bench's measurements to the verdict (:mod:`train.verdict`): the evidence of the primary backend (its
loader rate at the most workers, its stage seconds with the host→device copy, its 1-worker rate as the per-core
rate), the levers (the other backends, measured; pre-resized shards, extrapolated from decoded pixels:
:func:`mean_pixels`), and what the end-to-end runs add to the verdict's lines (:func:`end_to_end_lines`)."""

from __future__ import annotations

from pipeline.backends import StageSeconds
from pipeline.dataset import DatasetInfo
from train.iobench.config import PRIMARY, IoBenchConfig
from train.iobench.results import IoBenchResult, MaxSizeLever
from train.verdict import Evidence, Lever, Verdict, decide


def jpeg_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of a JPEG from its header alone: simplejpeg (libjpeg-turbo) where installed, else PIL,
    which also reads only the header (io-bench runs without simplejpeg, e.g. on a GPU machine its wheel did not
    reach; the loaders' decoders, named in io-bench's ``decoders:`` line, fall back to PIL too).

    Raises:
        ValueError: not a readable JPEG header.
    """
    try:
        import simplejpeg
    except ImportError:
        simplejpeg = None
    if simplejpeg is not None:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        return w, h
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(str(exc)) from exc


def mean_pixels(info: DatasetInfo, limit: int = 200, max_size: int | None = None) -> float:
    """Mean decoded pixels per train image over the first ``limit`` samples (JPEG headers only, :func:`jpeg_size`);
    with ``max_size``, as if every image's longer side had been limited to it (``shard-imagenet --max-size``)."""
    from pipeline.read.tarstream import iter_samples

    total, count = 0.0, 0
    for path in info.shard_paths("train"):
        for _, members in iter_samples(path):
            try:
                w, h = jpeg_size(members["jpg"])
            except (KeyError, ValueError):
                continue
            scale = min(1.0, max_size / max(w, h)) if max_size else 1.0
            total += round(w * scale) * round(h * scale)
            count += 1
            if count >= limit:
                return total / count
    return total / max(count, 1)


def max_size_lever(config: IoBenchConfig, info: DatasetInfo, stages: StageSeconds, input_rate: float) -> MaxSizeLever:
    """The loader rate with shards re-made at ``config.max_size`` (default 10/7 of the image size), from
    ``input_rate`` (img/s) with the decode seconds of ``stages`` (per image) scaled by the decoded pixels."""
    max_size = config.max_size or round(config.image_size * 10 / 7)
    before, after = mean_pixels(info), mean_pixels(info, max_size=max_size)
    new_total = stages.total - stages.decode * (1 - after / before)  # decode time taken as ∝ decoded pixels
    return MaxSizeLever(max_size, before, after, input_rate * stages.total / new_total)


def _primary(result: IoBenchResult) -> str:
    """The backend the verdict is about: :data:`PRIMARY` where swept, else the sweep's first."""
    return PRIMARY.value if PRIMARY.value in result.sweep else next(iter(result.sweep))


def io_verdict(config: IoBenchConfig, result: IoBenchResult, info: DatasetInfo, cores: int) -> Verdict | None:
    """The verdict on the primary backend (None without a sweep or a compute-only rate); sets
    ``result.max_size_lever`` where the primary backend's decode time is known."""
    if not result.sweep or result.compute is None:
        return None
    primary = _primary(result)
    points = result.sweep[primary]
    most = max(points)  # the most workers measured (normally all cores)
    input_rate = points[most].median
    stages = result.stage_seconds(primary) if primary in result.stages else None
    levers = [Lever(f"--loader {kind}", rates[max(rates)].median, f"measured, {max(rates)} workers")
              for kind, rates in result.sweep.items() if kind != primary]
    if stages is not None and stages.decode:
        lever = result.max_size_lever = max_size_lever(config, info, stages, input_rate)
        if lever.mean_pixels_after < lever.mean_pixels:
            levers.append(Lever(f"shards re-made with shard-imagenet --max-size {lever.max_size}", lever.rate,
                                f"extrapolated: decode cost x {lever.mean_pixels_after / lever.mean_pixels:.2f} "
                                f"(decoded pixels)"))
    return decide(Evidence(compute_rate=result.compute.p_core, input_rate=input_rate, stage_seconds=stages,
                           per_core_rate=points[1].median if 1 in points else None, workers=most, cores=cores,
                           levers=tuple(levers)))


def end_to_end_lines(result: IoBenchResult) -> list[str]:
    """What the end-to-end runs add: their rates, and whether the step slowed down with a loader running."""
    lines = []
    compute = result.compute.p_core if result.compute else None
    fastest_step = max((run.p_core for run in result.end_to_end.values()), default=0.0)
    if compute and fastest_step > 1.25 * compute:
        lines.append(f"check: the step alone ran at {fastest_step:.1f} img/s in an end-to-end run but "
                     f"{compute:.1f} img/s compute-only: the compute-only run was disturbed (a busy machine?); "
                     f"re-run with more --steps")
    on_cpu = " (the step runs on the CPU here)" if result.machine.device == "cpu" else ""
    for kind, run in result.end_to_end.items():
        lines.append(f"end to end with the {kind} loader: {run.p_train:.1f} img/s (data wait "
                     f"{100 * run.data_wait_fraction:.0f}%, step alone {run.p_core:.1f} img/s).")
        if compute and run.p_core < 0.8 * compute:
            lines.append(f"with the {kind} loader running, the training step itself ran at "
                         f"{run.p_core / compute:.2f}x its compute-only rate: loader and step compete for the "
                         f"same host cores{on_cpu}.")
    return lines


__all__ = ["end_to_end_lines", "io_verdict", "max_size_lever", "mean_pixels"]
