"""gpu_check's preflight (issue 22 item 1): a few seconds before any leg, what the legs need, each a
:class:`Check` in results.json and in the table's header; a leg whose need failed is skipped with the reason.

* ``wheels``: the carried wheels joined, verified and installed by :func:`benchmarks.gpu_wheels.prepare_wheels`
  (its problems are a warning: the import checks below say what they cost);
* ``import simplejpeg``: failing, the cpu loader and io-bench decode with PIL (a warning, nothing skipped);
* ``import nvidia.dali``: not found and no DALI wheel carried: the dali leg is ``not installed``; a carried
  wheel that does not import fails the check (the dali leg is skipped with the reason);
* ``/dev/shm``: free space against what the loader workers hand over in it (:func:`shm_need_bytes`); short, the
  loader legs and io-bench run with as many workers as fit (said in the check and the table's header);
* ``cuda``: ``torch.cuda.is_available()``, the device's name and one small op on it; failing, every train leg
  and io-bench is skipped (on the GPU machine they all run on CUDA);
* ``decode_jpeg on cuda``: one ``torchvision.io.decode_jpeg(..., device="cuda")`` of a small JPEG; failing, the
  nvjpeg leg is skipped.

In ``--smoke`` (this machine's CPU) the two CUDA checks say ``no CUDA (smoke)`` and block nothing.

The imports and CUDA checks run in one subprocess (``python -m benchmarks.gpu_check_preflight --probe``, in the
legs' environment, so with the installed wheels on its ``PYTHONPATH``), which prints one ``PREFLIGHT_JSON`` line
(:func:`probe`); gpu_check runs it under a timeout and reads that line (:func:`checks_from_probe`).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

OK, FAILED, WARNING, NA = "ok", "failed", "warning", "n/a"
PROBE_MARK = "PREFLIGHT_JSON "
PROBE_MODULES = ("simplejpeg", "nvidia.dali")
SHM_PREFETCH = 2  # batches in flight per DataLoader worker (prefetch_factor)
SHM_MARGIN_BYTES = 256 * 2 ** 20  # the pin-memory thread's copies, torch's own segments, other users
NO_CUDA_SMOKE = "no CUDA (smoke)"
CUDA, DECODE, DALI, SIMPLEJPEG, SHM, WHEELS = ("cuda", "decode_jpeg on cuda", "import nvidia.dali",
                                               "import simplejpeg", "/dev/shm", "wheels")


@dataclass(frozen=True)
class Check:
    """One preflight check: its name, ``ok`` / ``failed`` / ``warning`` / ``n/a`` and one line of detail."""

    name: str
    status: str
    detail: str


@dataclass(frozen=True)
class WheelsOutcome:
    """What the wheel step gave: its check, the folder to put first on ``PYTHONPATH`` (None: nothing installed)
    and the carried wheel files (installed or assembled) by name."""

    check: Check
    site: Path | None
    carried: tuple[str, ...]


def _dist(wheel: str) -> str:
    """"simplejpeg-1.9.0-cp312-...whl" -> "simplejpeg-1.9.0": a wheel's name and version."""
    return "-".join(Path(wheel).name.split("-")[:2])


def prepare_carried_wheels(wheel_dir: Path, parts_dir: Path, site: Path, timeout_s: float = 120.0) -> WheelsOutcome:
    """Join, verify and install the carried wheels through :func:`benchmarks.gpu_wheels.prepare_wheels` (which
    never raises for missing or bad input); a missing or failing wheel module is a warning, never an exception."""
    try:
        from benchmarks.gpu_wheels import prepare_wheels
    except ImportError as exc:
        return WheelsOutcome(Check(WHEELS, WARNING, f"benchmarks.gpu_wheels not importable ({exc}): none installed"),
                             None, ())
    try:
        report = prepare_wheels(wheel_dir=wheel_dir, parts_dir=parts_dir, site=site, timeout_s=timeout_s)
    except Exception as exc:  # its contract says it never raises; a bug there must not end the check
        return WheelsOutcome(Check(WHEELS, WARNING, f"prepare_wheels raised {type(exc).__name__}: {exc}"), None, ())
    parts = [f"installed {', '.join(map(_dist, report.installed)) or 'none'}"]
    if report.joined:
        parts.append(f"joined from parts: {', '.join(map(_dist, report.joined))}")
    parts += [f"problem: {p}" for p in report.problems]
    status = WARNING if report.problems else OK
    return WheelsOutcome(Check(WHEELS, status, "; ".join(parts)), report.site,
                         tuple(report.installed) + tuple(report.joined))


def shm_need_bytes(workers: int, batch_size: int, image_size: int) -> int:
    """Bytes of ``/dev/shm`` the loader workers hold at once: ``workers`` × :data:`SHM_PREFETCH` uint8 batches of
    ``batch_size`` × ``image_size``² × 3, plus :data:`SHM_MARGIN_BYTES`."""
    return workers * SHM_PREFETCH * batch_size * image_size * image_size * 3 + SHM_MARGIN_BYTES


def shm_check(workers: int, batch_size: int, image_size: int, free_bytes: int | None = None) -> tuple[Check, int]:
    """``(check, workers to use)``: all ``workers`` when ``/dev/shm`` (``free_bytes``, read when None) holds
    :func:`shm_need_bytes`, else as many as fit (at least 1; a warning that says so)."""
    if free_bytes is None:
        try:
            free_bytes = shutil.disk_usage("/dev/shm").free
        except OSError as exc:
            return Check(SHM, WARNING, f"cannot read /dev/shm ({exc}); --workers {workers} kept"), workers
    need = shm_need_bytes(workers, batch_size, image_size)
    gib = 2 ** 30
    if free_bytes >= need:
        return Check(SHM, OK, f"{free_bytes / gib:.1f} GiB free, {workers} workers need ~{need / gib:.2f} GiB"), workers
    fit = max(1, (free_bytes - SHM_MARGIN_BYTES) // (SHM_PREFETCH * batch_size * image_size * image_size * 3))
    fit = int(min(fit, workers))
    return Check(SHM, WARNING, f"{free_bytes / gib:.2f} GiB free, {workers} workers need ~{need / gib:.2f} GiB: "
                               f"loader legs run with --workers {fit}"), fit


def probe_command(cuda: bool) -> list[str]:
    """The probe subprocess's command line (run in the repo root)."""
    return [sys.executable, "-m", "benchmarks.gpu_check_preflight", "--probe"] + (["--cuda"] if cuda else [])


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


def _import(name: str) -> str:
    """"ok <version>" or the import's error line."""
    try:
        mod = __import__(name, fromlist=["_"])
    except Exception as exc:  # ImportError, or whatever a broken extension raises
        return _one_line(exc)
    return f"ok {getattr(mod, '__version__', '')}".strip()


def _cuda() -> str:
    """"ok: <device>, torch <v>, CUDA <v>" after a small op on the device, else why not."""
    try:
        import torch

        if not torch.cuda.is_available():
            return f"failed: torch.cuda.is_available() is False (torch {torch.__version__}, CUDA {torch.version.cuda})"
        x = torch.arange(8, device="cuda", dtype=torch.float32)
        total = float((x * 2).sum())
        if total != 56.0:
            return f"failed: a small op on cuda gave {total}, not 56"
        return f"ok: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    except Exception as exc:
        return f"failed: {_one_line(exc)}"


def _decode_jpeg_cuda() -> str:
    """"ok: ..." after torchvision decodes a 32×24 JPEG on the device the way the nvjpeg backend calls it
    (:func:`pipeline.compat.decode_jpegs`: batched nvJPEG on torchvision 0.19+), else why not."""
    try:
        import torch
        import torchvision
        from PIL import Image
        from torchvision.io import ImageReadMode

        from pipeline.compat import decode_jpegs

        buf = io.BytesIO()
        Image.new("RGB", (32, 24), (200, 30, 60)).save(buf, "JPEG", quality=90)
        data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        img = decode_jpegs([data], ImageReadMode.RGB, device="cuda")[0]
        torch.cuda.synchronize()
        if tuple(img.shape) != (3, 24, 32) or img.device.type != "cuda":
            return f"failed: decoded {tuple(img.shape)} on {img.device}, not (3, 24, 32) on cuda"
        return f"ok: torchvision {torchvision.__version__}, 3x24x32 on {img.device}"
    except Exception as exc:
        return f"failed: {_one_line(exc)}"


def probe(cuda: bool) -> dict:
    """The probe's findings: each of :data:`PROBE_MODULES` ("ok <version>" or the error line), and with ``cuda``
    the CUDA and decode_jpeg results (else :data:`NO_CUDA_SMOKE`)."""
    out = {"imports": {name: _import(name) for name in PROBE_MODULES}}
    if not cuda:
        return {**out, "cuda": NO_CUDA_SMOKE, "decode_jpeg": NO_CUDA_SMOKE}
    out["cuda"] = _cuda()
    out["decode_jpeg"] = _decode_jpeg_cuda() if out["cuda"].startswith("ok") else "failed: no working CUDA"
    return out


def parse_probe(output: str) -> dict | None:
    """The probe's dict from its output (the last :data:`PROBE_MARK` line), None when there is none."""
    for line in reversed(output.splitlines()):
        if line.startswith(PROBE_MARK):
            try:
                return json.loads(line[len(PROBE_MARK):])
            except ValueError:
                return None
    return None


def _status_of(result: str) -> tuple[str, str]:
    if result == NO_CUDA_SMOKE:
        return NA, result
    if result.startswith("ok"):
        return OK, result[len("ok: "):] if result.startswith("ok: ") else result
    return FAILED, result[len("failed: "):] if result.startswith("failed: ") else result


def _version(ok: str) -> str:
    """"ok 1.9.0" -> "version 1.9.0" ("imported" without one)."""
    version = ok[len("ok"):].strip()
    return f"version {version}" if version else "imported"


def checks_from_probe(raw: dict | None, why_none: str, dali_carried: bool) -> tuple[Check, ...]:
    """The import and CUDA checks from :func:`probe`'s dict (``raw``; None: the probe gave nothing, ``why_none``
    says why, and every check it makes fails with that)."""
    if raw is None:
        return tuple(Check(name, FAILED, f"probe: {why_none}") for name in (SIMPLEJPEG, DALI, CUDA, DECODE))
    imports = raw.get("imports", {})
    sj = imports.get("simplejpeg", "not probed")
    checks = [Check(SIMPLEJPEG, OK, _version(sj)) if sj.startswith("ok") else
              Check(SIMPLEJPEG, WARNING, f"{sj}: the cpu loader and io-bench decode with PIL (slower)")]
    dali = imports.get("nvidia.dali", "not probed")
    if dali.startswith("ok"):
        checks.append(Check(DALI, OK, _version(dali)))
    elif dali.startswith("ModuleNotFoundError") and not dali_carried:
        checks.append(Check(DALI, NA, f"not installed ({dali}); no DALI wheel carried"))
    else:
        checks.append(Check(DALI, FAILED, dali))
    for name, key in ((CUDA, "cuda"), (DECODE, "decode_jpeg")):
        status, detail = _status_of(str(raw.get(key, "failed: not probed")))
        checks.append(Check(name, status, detail))
    return tuple(checks)


@dataclass(frozen=True)
class PreflightResult:
    """Every check, the wheel folder for ``PYTHONPATH`` (None: none), the loader workers to use, the seconds."""

    checks: tuple[Check, ...]
    site: Path | None
    workers: int
    seconds: float

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def failed(self, name: str) -> str | None:
        """``"<name> failed: <detail>"`` when check ``name`` failed, else None."""
        c = self.check(name)
        return f"{c.name} failed: {c.detail}" if c is not None and c.status == FAILED else None

    def to_json(self) -> dict:
        return {"checks": [asdict(c) for c in self.checks], "site": str(self.site) if self.site else None,
                "workers": self.workers, "seconds": round(self.seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="gpu_check's preflight probe: prints one PREFLIGHT_JSON line")
    p.add_argument("--probe", action="store_true", required=True)
    p.add_argument("--cuda", action="store_true", help="also check CUDA and decode_jpeg on the device")
    args = p.parse_args(argv)
    print(PROBE_MARK + json.dumps(probe(args.cuda)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
