"""The two named figure sets pinned on a run with injected, known times (a fake clock), each formula against a
hand-computed value; FlagPerf's top-1 (mean of per-batch top-1) against the exact one; and the parameter and
activation dtypes of every precision mode."""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch

from pipeline.backends import Batch
from tools import train as train_cli
from train import distributed
from train import assemble as assemble_mod
from train import loop as loop_mod
from train import run as run_mod
from train import trainer as trainer_mod
from train.clock import SyncStepClock
from train.precision import Precision, make_grad_scaler, model_dtype

TRAIN_SAMPLES, VAL_SAMPLES, BATCH = 12, 6, 4  # 3 steps per epoch; val batches of 4 and 2 images
BUILD_S, ITER_START_S, BATCH_WAIT_S, STEP_S, EVAL_BATCH_S = 3.0, 1.0, 0.5, 2.0, 0.25


class FakeClock:
    """perf_counter / time that move only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def module(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(perf_counter=lambda: self.now, time=lambda: 1e9 + self.now,
                                     sleep=lambda s: None)


class TimedLoader:
    """A loader whose ``iter()`` costs ``start`` s and each batch ``per_batch`` s of the fake clock."""

    def __init__(self, inner, clock: FakeClock, start: float, per_batch: float):
        self.inner, self.clock, self.start, self.per_batch = inner, clock, start, per_batch

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        self.clock.advance(self.start)
        return self._batches(iter(self.inner))

    def _batches(self, it):
        for batch in it:
            self.clock.advance(self.per_batch)
            yield batch


def _fake_run(monkeypatch, extra: tuple[str, ...] = ()):
    """Run ``fit`` on synthetic data under the fake clock; returns (report, run_start)."""
    clock = FakeClock()
    for module in (trainer_mod, assemble_mod):
        monkeypatch.setattr(module, "time", clock.module())
        monkeypatch.setattr(module, "process_start_time", lambda: 1e9 + 90.0)  # 10 s before the fake 100.0
    monkeypatch.setattr("train.clock.time", clock.module())
    build = trainer_mod.build_session

    def timed_build(cfg, env):
        session = build(cfg, env)
        clock.advance(BUILD_S)
        return dataclasses.replace(session, train_loader=TimedLoader(session.train_loader, clock, ITER_START_S,
                                                                     BATCH_WAIT_S),
                                   val_loader=TimedLoader(session.val_loader, clock, 0.0, EVAL_BATCH_S))

    monkeypatch.setattr(trainer_mod, "build_session", timed_build)
    real_of = loop_mod.TrainStep.of

    def timed_of(s):
        step = real_of(s)

        def run(batch):
            out = step(batch)
            clock.advance(STEP_S)
            return out
        return run

    monkeypatch.setattr(loop_mod.TrainStep, "of", staticmethod(timed_of))
    args = train_cli.build_parser().parse_args([
        "--loader", "synthetic", "--synthetic-train-samples", str(TRAIN_SAMPLES), "--synthetic-val-samples",
        str(VAL_SAMPLES), "--batch-size", str(BATCH), "--image-size", "32", "--workers", "0", "--epochs", "2",
        "--initial-eval", "--no-progress", "--target-acc1", "100", *extra])
    cfg = train_cli.config_from_args(args)
    env = distributed.init_distributed()
    run_start = clock.module().time()
    return run_mod.fit(cfg, env, run_start), run_start


@pytest.fixture()
def fake_run(monkeypatch):
    return _fake_run(monkeypatch)


def test_both_figure_sets_match_hand_computed_values(fake_run):
    report, _ = fake_run
    epoch_train = ITER_START_S + 3 * (BATCH_WAIT_S + STEP_S)  # 8.5 s: loader start-up, 3 batches and steps
    epoch_eval = 2 * EVAL_BATCH_S  # 0.5 s
    loop = 2 * (epoch_train + epoch_eval)  # 18.0 s
    f = report.flagperf
    # FlagPerf: len(dataset) per epoch, every step, rank 0, e2e from the run's start with the initial evaluation
    assert f.figure_set.value == "flagperf" and f.trained_images == 2 * TRAIN_SAMPLES
    assert f.p_whole == pytest.approx(24 / loop)
    assert f.p_train == pytest.approx(24 / (2 * epoch_train))
    assert f.p_core == pytest.approx(24 / (6 * STEP_S))
    assert f.initial_eval_s == pytest.approx(epoch_eval)
    assert f.e2e_time == pytest.approx(BUILD_S + epoch_eval + loop)  # 21.5 s
    assert (f.loop_s, f.epochs_train_s, f.compute_s) == pytest.approx((loop, 2 * epoch_train, 6 * STEP_S))
    assert f.converged is True and f.p_core_timing == "sync"  # synthetic labels are learnt: 100% top-1
    # steady: the first step is warm-up (mark after it: 1 s start-up + 0.5 s wait + 2 s step), max over ranks
    s = report.steady
    warm = ITER_START_S + BATCH_WAIT_S + STEP_S
    assert report.training.warmup_steps == 1 and s.trained_images == 5 * BATCH
    assert s.p_whole == pytest.approx(20 / (loop - warm))
    assert s.p_train == pytest.approx(20 / (loop - warm - 2 * epoch_eval))
    assert s.p_core == pytest.approx(20 / (5 * STEP_S))
    assert s.e2e_time == pytest.approx(10.0 + BUILD_S + epoch_eval + loop)  # from process start
    assert report.training.times.times_s.data == pytest.approx(5 * BATCH_WAIT_S)
    js = report.to_json()
    assert js["flagperf"]["p_whole"] == f.p_whole and js["p_whole"] == s.p_whole and js["figure_set"] == "steady"
    summary = report.summary()
    assert summary.index("flagperf figures") < summary.index("steady figures")
    fp16 = dataclasses.replace(report, numerics=dataclasses.replace(report.numerics, precision="fp16",
                                                                    page_label="bf16"),
                               placement=dataclasses.replace(report.placement, precision="fp16"))
    flagperf_row, steady_row = [line for line in fp16.rows().splitlines() if line.startswith("| CPU")]
    assert "| bf16 |" in flagperf_row and "| fp16 |" in steady_row  # FlagPerf's page label vs the mode


def test_a_cut_short_epoch_counts_the_images_it_trained(monkeypatch):
    report, _ = _fake_run(monkeypatch, ("--max-steps", "4"))  # epoch 1 whole (3 steps), epoch 2 one step
    assert report.flagperf.trained_images == TRAIN_SAMPLES + 1 * BATCH  # len(dataset) + the cut epoch's images
    assert report.steady.trained_images == 3 * BATCH  # 4 steps, 1 of them warm-up
    epoch1, epoch2 = ITER_START_S + 3 * (BATCH_WAIT_S + STEP_S), ITER_START_S + BATCH_WAIT_S + STEP_S
    assert report.flagperf.p_train == pytest.approx(16 / (epoch1 + epoch2))
    assert report.flagperf.p_core == pytest.approx(16 / (4 * STEP_S))


class _Stub(torch.nn.Module):
    """Logits that put the label of each image first when ``correct`` says so, else a wrong class."""

    def __init__(self, correct: list[bool]):
        super().__init__()
        self.correct = iter(correct)
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, images):  # images carry their label in [:, 0, 0, 0]
        labels = images[:, 0, 0, 0].to(torch.int64)
        out = torch.zeros(images.shape[0], 10)
        for i, label in enumerate(labels.tolist()):
            out[i, label if next(self.correct) else (label + 1) % 10] = 1.0
        return out


def test_flagperf_top1_is_the_mean_of_per_batch_top1():
    env = distributed.DistEnv(0, 1, 0, torch.device("cpu"))
    labels = [torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6])]
    batches = [Batch(lab.float().view(-1, 1, 1, 1).expand(-1, 3, 2, 2).clone(), lab) for lab in labels]
    model = _Stub([True, True, True, False, False, False])  # batch 1: 3 of 4, batch 2: 0 of 2
    result = loop_mod.evaluate(model, batches, Precision.FP32, env)
    assert result.acc1 == pytest.approx(50.0)  # 3 of 6 images
    assert result.batch_mean_acc1 == pytest.approx((75.0 + 0.0) / 2)  # FlagPerf's: 37.5
    assert (result.count, result.batches) == (6, 2)


@pytest.mark.parametrize("precision, param, activation, scaler", [
    (Precision.FP32, torch.float32, torch.float32, False),
    (Precision.AMP, torch.float32, torch.float16, True),
    (Precision.FP16, torch.bfloat16, torch.bfloat16, False),  # FlagPerf's fp16: a bfloat16 cast, no scaler
    (Precision.BF16, torch.float32, torch.bfloat16, False),
    (Precision.HALF, torch.float16, torch.float16, False),
])
def test_precision_modes_parameter_and_activation_dtypes(precision, param, activation, scaler):
    from train.model import build_resnet50
    from train.precision import unsupported

    cpu = torch.device("cpu")
    why = unsupported(precision, cpu)
    if why is not None:
        pytest.skip(why)  # e.g. amp / half on torch 2.0-2.2's CPU
    model = build_resnet50(10, cpu, dtype=model_dtype(precision))
    seen = {}

    def record(name):
        def hook(module, inputs, output) -> None:  # returns None: the output is left as it is
            seen[name] = (inputs[0].dtype, output.dtype)
        return hook

    model.conv1.register_forward_hook(record("conv1"))
    model.fc.register_forward_hook(record("fc"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    grad_scaler = make_grad_scaler(precision, cpu)
    step = loop_mod.TrainStep(model, opt, sched, torch.nn.CrossEntropyLoss(), precision, cpu, grad_scaler)
    images = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    loss = step(Batch(images, torch.tensor([1, 2])))
    assert all(p.dtype is param for p in model.parameters())
    assert all(p.grad is None or p.grad.dtype is param for p in model.parameters())
    assert seen["conv1"][1] is activation and seen["fc"][1] is activation
    assert seen["conv1"][0] is (param if precision in (Precision.FP16, Precision.HALF) else torch.float32)
    assert (grad_scaler is not None) is scaler and torch.isfinite(loss.float())


def test_the_dataset_block_counts_every_split_and_names_the_source(tmp_path):
    """The shards' own split sizes, also for val when the run did not evaluate (``--no-eval``), and the name of
    the tree the shards were made from (shard-imagenet's report.json), not the shard folder's."""
    import json

    from pipeline.dataset import DatasetInfo, SplitInfo

    shards = tmp_path / "flagperf-shards"
    shards.mkdir()
    (shards / "report.json").write_text(json.dumps({"source": "/data/imagenet"}))
    info = DatasetInfo(shards, {"train": SplitInfo("train", 1_281_167, ("t.tar",), (1_281_167,)),
                                "val": SplitInfo("val", 50_000, ("v.tar",), (50_000,))}, ("a",) * 1000, {})
    args = train_cli.build_parser().parse_args(["--data", str(shards), "--no-eval", "--workers", "0"])
    d = assemble_mod.dataset_summary(train_cli.config_from_args(args), info, None, None, 1000)
    assert (d.name, d.train_samples, d.val_samples, d.num_classes) == ("imagenet", 1_281_167, 50_000, 1000)
    (shards / "report.json").unlink()  # no report: the folder's own name
    assert assemble_mod.dataset_summary(train_cli.config_from_args(args), info, None, None, 1000).name == "flagperf-shards"
    syn = train_cli.config_from_args(train_cli.build_parser().parse_args(
        ["--loader", "synthetic", "--synthetic-val-samples", "7", "--no-eval", "--workers", "0"]))
    d = assemble_mod.dataset_summary(syn, None, None, None, 1000)
    assert (d.name, d.val_samples) == ("synthetic", 7)


@pytest.mark.parametrize("precision, advice", [(Precision.HALF, "instead of half"), (Precision.FP16, "instead of fp16"),
                                               (Precision.FP32, None), (Precision.AMP, None)])
def test_divergence_advice_fits_the_precision(precision, advice):
    s = types.SimpleNamespace(precision=precision, peak_lr=0.8)
    with pytest.raises(ValueError) as err:
        loop_mod.check_finite(s, float("nan"), 0)
    msg = str(err.value)
    assert "lower --lr (now 0.8 peak)" in msg and "\n" not in msg
    assert (advice in msg) if advice else "--precision" not in msg
