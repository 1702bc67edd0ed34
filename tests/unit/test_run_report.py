"""The metrics JSON of a run, pinned: its keys in their order (training and ``--test-only``), and the typed
:class:`train.report.RunReport` behind it."""

from __future__ import annotations

import json

import pytest

from tools import train as train_cli

SMALL = ["--batch-size", "4", "--image-size", "32", "--workers", "1"]
SYNTHETIC = ["--loader", "synthetic", "--synthetic-train-samples", "12", "--synthetic-val-samples", "6", *SMALL]

STEADY = ["e2e_time", "p_whole", "p_train", "p_core", "acc1", "mem_used_gib", "mem_total_gib", "trained_images",
          "figure_set", "mem", "acc5", "eval_images", "val_samples"]
TAIL = ["flagperf", "numerics", "dataset", "resolved_config"]
IDENTITY = ["start_time", "host", "project_version", "git_commit"]  # which run: train.environment.RunIdentity
FLAGPERF = ["e2e_time", "p_whole", "p_train", "p_core", "acc1", "trained_images", "converged", "initial_eval_s",
            "p_core_timing", "loop_s", "epochs_train_s", "compute_s", "figure_set"]
NUMERICS = ["precision", "page_label", "param_dtype", "input_dtype", "autocast_dtype", "grad_scaler", "tf32",
            "tf32_matmul", "tf32_cudnn", "tf32_mechanism", "metax_use_tf32", "cudnn_benchmark", "cudnn_deterministic",
            "channels_last"]
TRAIN_KEYS = [
    *STEADY, "steps", "ema_acc1", "target_acc1", "target_reached_epoch", "final_train_image_size",
    "channels_last", "compile", "optimizer_impl", "grad_scaler_syncs_per_step", "resumed_from_step", "resumed_from", "checkpoint_s", "resume_skip_s",
    "checkpoints_written", "warmup_steps", "warmup_s_rank0", "total_trained_images", "skipped_samples",
    "skipped_examples_rank0", "rank_steps_min", "rank_steps_max", "epochs", "timing", "device_syncs_rank0",
    "data_wait_fraction", "gpu_idle_fraction", "times_s", "rank0_times_s", "verdict",
    "loader_stage_seconds_per_image_rank0",
    "global_batch_size", "world_size", "precision", "loader", "device", "device_name", "mem_kind",
    "mem_peak_allocated_gib_rank0", "mem_peak_reserved_gib_rank0", "mem_device_used_gib_nvml_rank0", "versions",
    "config", "fix_hp", "argv", "environment", *IDENTITY, *TAIL]
TEST_ONLY_KEYS = [
    *STEADY, "test_only", "checkpoint", "checkpoint_step", "ema_acc1", "eval_s", "eval_img_per_s", "world_size",
    "precision", "loader", "device", "device_name", "mem_kind", "versions", "config", "fix_hp", "argv", "environment",
    *IDENTITY, *TAIL]
TIMES = ["e2e", "loop", "eval", "compute", "data"]
VERDICT = ["io_bound", "ratio", "dominant_stage", "cores_needed", "levers", "lines"]
VERSIONS = ["python", "torch", "torchvision", "cuda", "cudnn", "driver", "dali"]
ENVIRONMENT = ["machine", "cpu", "cpu_cores", "accelerator", "accelerator_vendor", "accelerator_count", "nodes",
               "processes_per_node", "interconnect", "os", "kernel", "driver", "accelerator_tool", "docker",
               "framework", "cuda", "maca", "tf32", "tf32_mechanism", "dependencies"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 6-step synthetic run with a checkpoint, then ``--test-only`` on it: (train json, test json)."""
    tmp = tmp_path_factory.mktemp("report")
    out, test_out, ck = tmp / "m.json", tmp / "t.json", tmp / "ck"
    assert train_cli.main([*SYNTHETIC, "--epochs", "2", "--metrics-json", str(out), "--checkpoint-dir", str(ck)]) == 0
    assert train_cli.main([*SYNTHETIC, "--test-only", "--checkpoint-dir", str(ck), "--metrics-json",
                           str(test_out)]) == 0
    return json.loads(out.read_text()), json.loads(test_out.read_text())


def test_train_metrics_json_keys_and_order(trained):
    m, _ = trained
    assert list(m) == TRAIN_KEYS
    assert list(m["times_s"]) == list(m["rank0_times_s"]) == TIMES
    assert list(m["verdict"]) == VERDICT and list(m["versions"]) == VERSIONS
    assert list(m["environment"]) == ENVIRONMENT
    assert list(m["flagperf"]) == FLAGPERF and list(m["numerics"]) == NUMERICS
    assert m["figure_set"] == "steady" and m["flagperf"]["figure_set"] == "flagperf"
    # FlagPerf's count: len(dataset) = 12 per finished epoch, every step timed (no warm-up left out)
    assert (m["flagperf"]["trained_images"], m["flagperf"]["initial_eval_s"]) == (24, None)
    assert m["dataset"] == {"data": None, "name": "synthetic", "train_samples": 12, "val_samples": 6,
                            "num_classes": 1000, "manifest_sha256": None}
    assert m["resolved_config"]["loader_cfg"]["batch_size"] == 4 and m["resolved_config"]["tf32"] == "off"
    assert (m["numerics"]["cudnn_benchmark"], m["numerics"]["param_dtype"]) == (True, "float32")
    env = m["environment"]
    assert (env["nodes"], env["processes_per_node"], env["accelerator_count"]) == (1, 1, 0)
    assert (env["accelerator"], env["accelerator_vendor"], env["accelerator_tool"], env["maca"]) == (None, "none",
                                                                                                    None, None)
    assert (env["tf32"], env["tf32_mechanism"]) == (None, None)  # a CPU run: no TF32 (MetaX: see test_accelerator)
    assert env["framework"] == f"pytorch-{m['versions']['torch']}" and env["cpu_cores"] >= 1
    assert env["dependencies"]["torchvision"] == m["versions"]["torchvision"]
    assert (m["steps"], m["epochs"], m["warmup_steps"], m["trained_images"], m["total_trained_images"]) == (6, 2, 1,
                                                                                                          20, 24)
    assert (m["eval_images"], m["val_samples"], m["global_batch_size"], m["world_size"]) == (6, 6, 4, 1)
    assert (m["config"], m["fix_hp"], m["loader"], m["timing"], m["mem_kind"]) == ("CPUx1x1", "bs=4,lr=0.004",
                                                                                   "synthetic", "sync", "cpu-rss")
    assert m["resumed_from"] is None and m["resumed_from_step"] == 0 and len(m["checkpoints_written"]) == 2
    assert m["loader_stage_seconds_per_image_rank0"] is None and m["skipped_samples"] == 0
    assert m["mem"] == f"{m['mem_used_gib']:.1f}/{m['mem_total_gib']:.1f}"


def test_test_only_metrics_json_keys_and_order(trained):
    _, t = trained
    assert list(t) == TEST_ONLY_KEYS and list(t["versions"]) == VERSIONS
    assert t["test_only"] is True and t["checkpoint_step"] == 6 and t["fix_hp"] == "bs=4,test-only"
    assert (t["p_whole"], t["p_train"], t["p_core"], t["trained_images"]) == (None, None, None, 0)
    assert t["eval_images"] == t["val_samples"] == 6 and t["ema_acc1"] is None


def test_run_returns_the_typed_report_its_json_is_the_file(tmp_path):
    import dataclasses

    from train.run import run
    from train.report import RunReport

    out = tmp_path / "m.json"
    args = train_cli.build_parser().parse_args([*SYNTHETIC, "--max-steps", "3", "--no-eval", "--metrics-json",
                                                str(out)])
    report = run(train_cli.config_from_args(args))
    assert isinstance(report, RunReport)
    m = json.loads(out.read_text())
    assert json.loads(json.dumps(report.to_json())) == m and list(report.to_json()) == TRAIN_KEYS
    # what io-bench reads
    assert (report.p_core, report.p_train, report.data_wait_fraction) == (m["p_core"], m["p_train"],
                                                                          m["data_wait_fraction"])
    assert report.gpu_idle_fraction is m["gpu_idle_fraction"] is None  # a CPU run times the host: not measured
    assert report.summary().splitlines()[-2 - len(report.training.verdict.lines)].startswith("time split")
    assert report.summary().splitlines()[-1 - len(report.training.verdict.lines)] == (
        "GPU idle: not measured (timing sync: step times include the device waits; --timing events on CUDA "
        "measures it)")
    assert (report.steps, report.precision, report.device, report.device_name) == (3, "fp32", "cpu",
                                                                                   m["device_name"])
    assert report.training.times.times_s.loop == m["times_s"]["loop"] and report.test is None
    assert report.steady.acc1 is None and "| / |" in report.row()
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.steady = None


def test_test_only_report_shape_and_summary():
    from train.verdict import Verdict
    from train.memory import MemoryUse
    from train.metrics import SteadyFigures
    from train.environment import collect, run_identity
    from train.report import (CheckpointTest, EvalCounts, Labels, MemoryDetail, Origin, Placement, RunReport,
                              Software, run_verdict)

    mem = MemoryUse(1.0, 8.0, "cpu-rss")
    report = RunReport(SteadyFigures(5.0, None, None, None, 50.0, 1.0, 8.0, 0), EvalCounts(75.0, 4, 4), None,
                       CheckpointTest("ck.pt", 6, None, 0.5, 8.0), Placement(1, "fp32", "cpu", "cpu", "x86"),
                       MemoryDetail.of(mem, with_peaks=False), Software({}),
                       Labels("CPUx1x1", "bs=4,test-only", ("train",)), Origin(collect(1, 1, {}), run_identity(0.0)))
    assert list(report.to_json()) == TEST_ONLY_KEYS
    assert report.to_json()["argv"] == ["train"] and report.to_json()["test_only"] is True
    assert (report.steps, report.p_core, report.data_wait_fraction, report.device_name) == (0, None, None, "x86")
    assert report.gpu_idle_fraction is None
    assert report.summary().splitlines() == [
        "test: ck.pt (step 6): val top-1 50.00% top-5 75.00% on 4 images, 8.0 img/s",
        "steady figures (warm-up steps left out, max over ranks, exact top-1):",
        "| config | precision | fix_hp | e2e_time | p_whole | p_train | p_core | acc | mem |",
        "| ------ | --------- | ------ | -------- | ------- | ------- | ------ | --- | --- |",
        "| CPUx1x1 | fp32 | bs=4,test-only | 5 | / | / | / | 50.0% | 1.0/8.0 |"]
    assert isinstance(run_verdict(100.0, 50.0, 0.5, None, 1), Verdict)
