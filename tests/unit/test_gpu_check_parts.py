"""benchmarks/gpu_check.py's parts that need no subprocess (issue 22 item 1): the streamed step log read back
(per-window p_train, a killed leg's partial rates), the preflight's checks and which legs they block, the exit
rule (only a required leg fails the check), and io-bench's JPEG header reading without simplejpeg."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import types
from pathlib import Path

import pytest

from benchmarks import gpu_check_preflight as pf
from benchmarks.gpu_check_steps import partial_rates, read_step_log, window_entries, window_summary

REPO = Path(__file__).resolve().parents[2]


def _load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check_parts_under_test", REPO / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


gc = _load_gpu_check()


def _window(step: int, epoch: int, rate: float = 16.0, window_s: float = 0.5) -> dict:
    return {"step": step, "epoch": epoch, "loss": 6.9, "lr": 0.1, "window_s": window_s, "img_per_s": rate,
            "data_wait_s": 0.1, "compute_s": 0.4, "data_wait_fraction": 0.2, "paused_s": 0.0, "time": 0.0}


def _write_log(path: Path, lines: list[dict], torn: str = "") -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + torn)
    return path


def test_step_log_of_a_killed_leg_gives_its_partial_rates(tmp_path):
    """Warm-up windows left out, a torn last line ignored, an earlier process's lines dropped (run_start)."""
    start = {"run_start": 0.0, "first_step": 0, "every": 2, "global_batch": 8}
    lines = [start, _window(2, 0, 99.0), start] + [_window(s, 0 if s < 6 else 1) for s in (2, 4, 6, 8)]
    log = read_step_log(_write_log(tmp_path / "s.jsonl", lines, torn='{"step": 10, "epo'))
    assert [(w.first_step, w.last_step, w.boundary) for w in log.windows] == \
        [(1, 2, False), (3, 4, False), (5, 6, True), (7, 8, False)]
    part = partial_rates(log, warmup_steps=2)
    assert part["steps_done"] == 8 and part["includes_warmup"] is False
    assert (part["steps"], part["images"], part["train_s"]) == (6, 48, 1.5)
    assert part["p_train"] == pytest.approx(32.0) and part["p_core"] == pytest.approx(40.0)
    assert part["data_wait_fraction"] == pytest.approx(0.2)
    # killed inside its warm-up: the rates over what it ran, said so
    assert partial_rates(log, warmup_steps=100)["includes_warmup"] is True
    assert partial_rates(read_step_log(tmp_path / "missing.jsonl"), 1) is None


def test_window_summary_marks_epoch_boundaries_and_shortens():
    log_lines = [{"img_per_s": r, "boundary": b} for r, b in ((1012.4, False), (890.0, True), (12.34, False))]
    assert window_summary(log_lines) == "1012 890* 12.3"
    many = [{"img_per_s": float(100 + i), "boundary": False} for i in range(12)]
    assert window_summary(many, limit=4) == "100 101 102 ... 111"
    assert window_summary([]) == "-"


def test_window_entries_are_the_measured_windows(tmp_path):
    start = {"run_start": 0.0, "first_step": 0, "every": 1, "global_batch": 4}
    log = read_step_log(_write_log(tmp_path / "s.jsonl", [start] + [_window(s, 0) for s in (1, 2, 3)]))
    entries = window_entries(log, warmup_steps=1)
    assert [e["last_step"] for e in entries] == [2, 3] and entries[0]["data_wait_fraction"] == pytest.approx(0.2)


def test_shm_short_runs_the_loader_legs_with_fewer_workers():
    per_worker = pf.SHM_PREFETCH * 256 * 224 * 224 * 3
    check, workers = pf.shm_check(14, 256, 224, free_bytes=pf.SHM_MARGIN_BYTES + 5 * per_worker + 1)
    assert workers == 5 and check.status == pf.WARNING and "--workers 5" in check.detail
    check, workers = pf.shm_check(14, 256, 224, free_bytes=pf.shm_need_bytes(14, 256, 224))
    assert workers == 14 and check.status == pf.OK
    assert pf.shm_check(14, 256, 224, free_bytes=0)[1] == 1


def _probe(**over) -> dict:
    raw = {"imports": {"simplejpeg": "ok 1.9.0", "nvidia.dali": "ModuleNotFoundError: No module named 'nvidia'"},
           "cuda": "ok: NVIDIA H100 80GB HBM3, torch 2.11.0, CUDA 13.0", "decode_jpeg": "ok: 3x24x32 on cuda:0"}
    raw.update(over)
    return raw


def _preflight(checks) -> pf.PreflightResult:
    return pf.PreflightResult(tuple(checks), None, 14, 1.0)


def test_failed_decode_skips_only_the_nvjpeg_leg_with_the_reason():
    bad = _probe(decode_jpeg="failed: RuntimeError: nvjpeg: not supported")
    pre = _preflight(pf.checks_from_probe(bad, "", dali_carried=False))
    legs = {leg.name: leg for leg in gc.full_legs()}
    assert gc.preflight_block(legs["nvjpeg"], pre) == \
        (gc.SKIPPED, "preflight: decode_jpeg on cuda failed: RuntimeError: nvjpeg: not supported")
    assert gc.preflight_block(legs["cpu"], pre) is None and gc.preflight_block(legs["synthetic-amp"], pre) is None
    assert gc.preflight_block(legs["dali"], pre)[0] == gc.NOT_INSTALLED  # not found, no wheel carried


def test_no_cuda_skips_every_leg_and_fails_the_check():
    pre = _preflight(pf.checks_from_probe(_probe(cuda="failed: torch.cuda.is_available() is False"), "", False))
    entries = []
    for leg in gc.full_legs():
        status, reason = gc.preflight_block(leg, pre)
        entries.append(gc.leg_entry(leg, status, reason=reason))
    assert {e["status"] for e in entries} == {gc.SKIPPED, gc.NOT_INSTALLED}
    assert all(e["reason"].startswith("preflight: cuda failed") for e in entries if e["status"] == gc.SKIPPED)
    failures = gc.run_failures({"legs": entries})
    assert len(failures) == 2 and failures[0].startswith("synthetic-amp (required) skipped: preflight: cuda failed")


def test_a_carried_dali_wheel_that_does_not_import_skips_the_leg():
    checks = pf.checks_from_probe(_probe(), "", dali_carried=True)
    dali = next(leg for leg in gc.full_legs() if leg.name == "dali")
    status, reason = gc.preflight_block(dali, _preflight(checks))
    assert status == gc.SKIPPED and reason.startswith("preflight: import nvidia.dali failed: ModuleNotFoundError")


def test_smoke_probe_blocks_nothing_and_a_silent_probe_fails_its_checks():
    smoke = pf.checks_from_probe(_probe(cuda=pf.NO_CUDA_SMOKE, decode_jpeg=pf.NO_CUDA_SMOKE), "", False)
    assert {c.name: c.status for c in smoke}[pf.CUDA] == pf.NA
    assert all(gc.preflight_block(leg, _preflight(smoke)) in (None, (gc.NOT_INSTALLED, smoke[1].detail))
               for leg in gc.smoke_legs())
    silent = pf.checks_from_probe(None, "timed out after 120 s", False)
    assert all(c.status == pf.FAILED and c.detail == "probe: timed out after 120 s" for c in silent)
    assert pf.parse_probe("noise\n" + pf.PROBE_MARK + '{"cuda": "x"}\n') == {"cuda": "x"}
    assert pf.parse_probe("Traceback ...\nImportError: boom\n") is None


def test_smoke_probe_runs_here():
    raw = pf.probe(cuda=False)
    assert raw["cuda"] == raw["decode_jpeg"] == pf.NO_CUDA_SMOKE and set(raw["imports"]) == set(pf.PROBE_MODULES)


def test_only_required_legs_fail_the_check():
    legs = {leg.name: leg for leg in gc.full_legs()}
    data = {"legs": [gc.leg_entry(legs["synthetic-amp"], gc.INCOMPLETE, cut_by="budget"),
                     gc.leg_entry(legs["cpu"], gc.SKIPPED, reason="budget: 10 s left of 480 s, the leg needs ~45 s"),
                     gc.leg_entry(legs["nvjpeg"], gc.FAILED, error="exit 1: boom"),
                     gc.leg_entry(legs["synthetic-amp-compile"], gc.INCOMPLETE, cut_by="timeout")]}
    assert gc.run_failures(data) == []
    data["legs"].append(gc.leg_entry(legs["cpu"], gc.FAILED, error="exit 1: RuntimeError: x"))
    assert gc.run_failures(data) == ["cpu (required) failed: exit 1: RuntimeError: x"]
    data["legs"].pop()
    hung = gc.leg_entry(legs["cpu"], gc.INCOMPLETE, cut_by="timeout", partial=None)  # a hang: not one window logged
    assert gc.run_failures({"legs": data["legs"] + [hung]}) == \
        ["cpu (required) was killed (timeout) before its first step-log window"]
    slow = gc.leg_entry(legs["cpu"], gc.INCOMPLETE, cut_by="timeout", partial={"steps": 50, "p_train": 900.0})
    assert gc.run_failures({"legs": data["legs"] + [slow]}) == []


def test_leg_order_and_the_compile_legs_need():
    legs = gc.full_legs()
    assert [leg.name for leg in legs] == ["synthetic-amp", "cpu", "nvjpeg", "dali", "folder", "io-bench",
                                          "synthetic-bf16", "synthetic-fp32-tf32", "synthetic-amp-compile"]
    assert [leg.name for leg in legs if leg.required] == ["synthetic-amp", "cpu"]
    compile_leg = legs[-1]
    assert compile_leg.need_s >= compile_leg.timeout_s  # never started where the budget would cut it
    assert all(leg.warmup_steps % leg.log_every == 0 for leg in legs if leg.kind != "io-bench")


def test_incomplete_row_shows_partial_figures():
    leg = next(leg for leg in gc.full_legs() if leg.name == "cpu")
    partial = {"steps_done": 60, "includes_warmup": False, "steps": 35, "images": 8960, "train_s": 4.0,
               "p_train": 2240.0, "p_core": 2800.0, "data_wait_fraction": 0.2}
    entry = gc.leg_entry(leg, gc.INCOMPLETE, cut_by="budget", reason="the budget ended", partial=partial,
                         windows=[{"img_per_s": 2300.0, "boundary": False}, {"img_per_s": 2100.0, "boundary": True}],
                         wall_s=30.0)
    row = gc.leg_row(entry, {"amp": 2800.0})
    assert row[1] == "incomplete: the budget ended"
    assert row[2:7] == ["~2800.0", "~2240.0", "~20.0%", "~0.80x", "2300 2100*"]


class _FakeReport:
    def __init__(self, site, installed=(), joined=(), problems=()):
        self.site, self.installed, self.joined, self.problems = site, installed, joined, problems


def test_carried_wheels_go_through_gpu_wheels(monkeypatch, tmp_path):
    calls = []

    def prepare_wheels(**kwargs):
        calls.append(kwargs)
        return _FakeReport(tmp_path / "site", ("simplejpeg-1.9.0.whl",), ("nvidia_dali-2.4.0.whl",),
                           ("dali wheel: 2 of 4 parts present",))

    monkeypatch.setitem(sys.modules, "benchmarks.gpu_wheels", types.SimpleNamespace(prepare_wheels=prepare_wheels))
    out = pf.prepare_carried_wheels(tmp_path / "w", tmp_path / "p", tmp_path / "site", timeout_s=7.0)
    assert calls == [{"wheel_dir": tmp_path / "w", "parts_dir": tmp_path / "p", "site": tmp_path / "site",
                      "timeout_s": 7.0}]
    assert out.site == tmp_path / "site" and out.check.status == pf.WARNING
    assert "problem: dali wheel: 2 of 4 parts present" in out.check.detail
    assert out.carried == ("simplejpeg-1.9.0.whl", "nvidia_dali-2.4.0.whl")
    monkeypatch.setitem(sys.modules, "benchmarks.gpu_wheels", None)  # the module missing: a warning, no exception
    missing = pf.prepare_carried_wheels(tmp_path / "w", tmp_path / "p", tmp_path / "site")
    assert missing.site is None and missing.check.status == pf.WARNING


def test_io_bench_reads_jpeg_sizes_without_simplejpeg(monkeypatch):
    from PIL import Image

    from train.iobench import evidence

    buf = io.BytesIO()
    Image.new("RGB", (40, 24)).save(buf, "JPEG")
    with_sj = evidence.jpeg_size(buf.getvalue())
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # import simplejpeg now raises ImportError
    assert evidence.jpeg_size(buf.getvalue()) == with_sj == (40, 24)
    with pytest.raises(ValueError):
        evidence.jpeg_size(b"not a jpeg")
