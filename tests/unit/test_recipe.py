"""Recipe pieces: parameter groups, schedules, EMA, progressive resolution, precision modes, zero-init."""

from __future__ import annotations

import pytest
import torch

from train.model import build_resnet50
from train.precision import Precision, autocast, make_grad_scaler, model_dtype
from train.recipe import ModelEma, Resolution, Schedule, build_scheduler, lr_factor, parameter_groups

CPU = torch.device("cpu")


def test_no_weight_decay_on_batchnorm_and_bias():
    model = build_resnet50(10, CPU)
    decay, no_decay = parameter_groups(model, 1e-4, decay_bn_and_bias=False)
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert all(id(m.weight) in no_decay_ids and id(m.bias) in no_decay_ids for m in bn)
    assert id(model.fc.bias) in no_decay_ids and id(model.fc.weight) not in no_decay_ids
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    n = sum(1 for _ in model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == n
    (one,) = parameter_groups(model, 1e-4, decay_bn_and_bias=True)
    assert len(one["params"]) == n


def test_schedules():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1) and lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5) and lr_factor(100, 10, 100) == pytest.approx(0.0)
    step = dict(schedule=Schedule.STEP, milestones=(30, 60), gamma=0.1)
    assert [lr_factor(s, 0, 100, **step) for s in (0, 29, 30, 59, 60, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = build_scheduler(opt, 2, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1.0) and lrs[1] == pytest.approx(2.0) and lrs[-1] < 0.1


def test_ema_tracks_weights():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEma(model, 0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # the first update copies the weights
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema.update(model)
    assert float(ema.module.weight[0, 0].detach()) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ModelEma(model, 1.0)


def test_ema_matches_torch_averaged_model_and_its_count_survives_a_state_dict():
    """Same numbers as torch's AveragedModel (EMA fn, buffers averaged), and the update count is in the state:
    an EMA restored from a state_dict continues the average instead of restarting from the live weights."""
    swa_utils = pytest.importorskip("torch.optim.swa_utils")
    if not hasattr(swa_utils, "get_ema_multi_avg_fn"):
        pytest.skip(f"torch {torch.__version__} has no get_ema_multi_avg_fn (the reference; torch 2.1+)")
    AveragedModel, get_ema_multi_avg_fn = swa_utils.AveragedModel, swa_utils.get_ema_multi_avg_fn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ours, ref = ModelEma(model, 0.9), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(4):
        model(torch.randn(8, 3)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        ours.update(model)
        ref.update_parameters(model)
        if step == 1:  # checkpoint and restore mid-way
            state = ours.state_dict()
            ours = ModelEma(model, 0.9)
            ours.load_state_dict(state)
            assert ours.updates == 2
    for (name, a), b in zip(ours.module.state_dict().items(), ref.module.state_dict().values()):
        if a.is_floating_point():
            assert torch.allclose(a, b, atol=1e-6), name


def test_progressive_resolution():
    r = Resolution(start=160, end=224, ramp_start=2, ramp_end=6, eval=256, step=32)
    assert [r.train_size(e) for e in range(8)] == [160, 160, 160, 160, 192, 192, 224, 224]
    assert Resolution(start=64, end=64, ramp_start=0, ramp_end=0, eval=80).train_size(5) == 64


def test_precision_modes_build_a_scaler_only_for_amp():
    assert make_grad_scaler(Precision.BF16, CPU) is None  # bf16 has fp32's range: no loss scaling
    assert make_grad_scaler(Precision.FP16, CPU) is None and make_grad_scaler(Precision.HALF, CPU) is None
    assert make_grad_scaler(Precision.FP32, CPU) is None
    if hasattr(torch.amp, "GradScaler"):  # torch 2.3+: a CPU GradScaler exists
        assert isinstance(make_grad_scaler(Precision.AMP, CPU), torch.amp.GradScaler)
    else:  # torch 2.0-2.2: one line saying what to use instead
        with pytest.raises(ValueError, match="--precision amp on a cpu device needs torch.amp.GradScaler"):
            make_grad_scaler(Precision.AMP, CPU)
    assert model_dtype(Precision.FP16) is torch.bfloat16 and model_dtype(Precision.HALF) is torch.float16
    assert model_dtype(Precision.BF16) is torch.float32
    model = build_resnet50(10, CPU, dtype=model_dtype(Precision.FP16))
    assert all(p.dtype is torch.bfloat16 for p in model.parameters())
    with autocast(Precision.BF16, CPU):
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype is torch.bfloat16


def test_zero_init_residual():
    model = build_resnet50(10, CPU)
    last_bn = [b.bn3.weight for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer]
    assert all(float(w.detach().abs().sum()) == 0.0 for w in last_bn)
    assert float(build_resnet50(10, CPU, zero_init_residual=False).layer1[0].bn3.weight.detach().sum()) > 0


@pytest.mark.parametrize("fused", [False, True])
def test_sgd_after_a_step_the_grad_scaler_skipped_is_plain_momentum_sgd(fused):
    """Fused SGD (the CUDA choice) lazily allocates its momentum with empty_like and, on a step GradScaler skips
    for inf gradients, leaves it uninitialised: zero buffers made up front keep the next step exact. Runs torch's
    CPU fused kernel, the same logic as CUDA's."""
    from train.recipe import build_sgd

    if not hasattr(torch.amp, "GradScaler"):
        pytest.skip(f"torch {torch.__version__} has no CPU GradScaler (torch 2.3+)")
    p = torch.nn.Parameter(torch.ones(4))
    opt, impl = build_sgd([{"params": [p], "weight_decay": 0.0}], lr=0.1, momentum=0.875, nesterov=False,
                          fused=fused)
    assert impl in (("fused", "foreach") if fused else ("foreach",))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    scaler.scale(torch.ones(()))  # initialises the scale, as scaling the loss does
    for grad in (torch.full((4,), float("inf")), torch.ones(4)):  # step 1 overflows: GradScaler skips it
        opt.zero_grad()
        p.grad = grad * scaler.get_scale()  # what backward() of the scaled loss gives
        scaler.step(opt)
        scaler.update()
    assert torch.allclose(p.detach(), torch.full((4,), 0.9), rtol=0, atol=1e-7), p
    assert torch.equal(opt.state[p]["momentum_buffer"], torch.ones(4))
