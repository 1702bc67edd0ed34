"""pipeline.compat: on every stack each fallback does what the newer API does. The branch this torch / Python does
not take is forced here with monkeypatching, so both are tested on the development stack; ``make compat`` runs
this file on the old stacks too, where the fallbacks are the branches taken."""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from pipeline import compat


# --------------------------------------------------------------------------------------------------- Python

def test_cache_is_functools_cache_or_an_unbounded_lru_cache():
    calls = []

    @compat.cache
    def square(x):
        calls.append(x)
        return x * x

    assert [square(3), square(3), square(4)] == [9, 9, 16] and calls == [3, 4]
    fallback = functools.lru_cache(maxsize=None)
    assert compat.cache is getattr(functools, "cache", fallback) or compat.cache.__name__ == fallback.__name__


def _bool_parser(action):
    p = argparse.ArgumentParser(prog="t")
    p.add_argument("--resume", action=action, default=True, help="resume")
    return p


@pytest.mark.parametrize("action", [compat.BooleanOptionalAction, compat._BooleanOptionalAction])
def test_boolean_optional_action_fallback_parses_like_argparse(action):
    p = _bool_parser(action)
    assert p.parse_args([]).resume is True
    assert p.parse_args(["--no-resume"]).resume is False
    assert p.parse_args(["--no-resume", "--resume"]).resume is True
    assert "--resume" in p.format_help() and "--no-resume" in p.format_help()
    with pytest.raises(SystemExit):
        p.parse_args(["--resume=1"])


def test_zip_strict():
    assert list(compat.zip_strict([1, 2], "ab")) == [(1, "a"), (2, "b")]
    assert list(compat.zip_strict()) == []
    with pytest.raises(ValueError, match="argument 2 is shorter"):
        list(compat.zip_strict([1, 2], [1]))
    with pytest.raises(ValueError, match="argument 1 is shorter"):
        list(compat.zip_strict([1], iter([1, 2])))


def test_remove_suffix():
    assert compat.remove_suffix("a.tar.tmp", ".tmp") == "a.tar"
    assert compat.remove_suffix("a.tar", ".tmp") == "a.tar"
    assert compat.remove_suffix("a", "") == "a"


def test_toml_reader_is_tomllib_or_the_tomli_backport():
    assert compat.toml_loads('a = 1\n[t]\nb = "x"\n') == {"a": 1, "t": {"b": "x"}}
    with pytest.raises(compat.TOMLDecodeError):
        compat.toml_loads("a = = 1")
    expected = "tomllib" if sys.version_info >= (3, 11) else "tomli"
    assert compat._toml_module().__name__ == expected


@pytest.mark.parametrize("has_process_group", [True, False])
def test_new_process_group_kwargs_start_a_new_group(monkeypatch, has_process_group):
    if has_process_group and "process_group" not in inspect.signature(subprocess.Popen).parameters:
        pytest.skip("this Python's Popen has no process_group= (3.11+)")
    if not has_process_group:  # the < 3.11 branch, forced
        real = inspect.signature

        def no_process_group(obj, *a, **k):
            sig = real(obj, *a, **k)
            if obj is subprocess.Popen:
                return sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "process_group"])
            return sig

        monkeypatch.setattr(compat.inspect, "signature", no_process_group)
    kwargs = compat.new_process_group_kwargs()
    assert ("process_group" in kwargs) is has_process_group
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], **kwargs)
    try:
        time.sleep(0.2)
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------------- torch

def test_grad_scaler_branches(monkeypatch):
    if hasattr(torch.amp, "GradScaler"):
        assert isinstance(compat.grad_scaler("cpu"), torch.amp.GradScaler)
    monkeypatch.delattr(torch.amp, "GradScaler", raising=False)  # torch < 2.3
    with pytest.warns(UserWarning):  # CUDA is absent here: the CUDA scaler disables itself, as torch's does
        assert isinstance(compat.grad_scaler("cuda"), torch.cuda.amp.GradScaler)
    with pytest.raises(ValueError, match=r"--precision amp on a cpu device needs torch.amp.GradScaler"):
        compat.grad_scaler("cpu")


def test_autocast_support_is_tried():
    assert compat.autocast_dtype_supported("cpu", torch.bfloat16)
    assert compat.autocast_dtype_supported("cuda", torch.float16)  # CUDA's is never tried: always there


def _train(opt_factory, steps=3):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    opt = opt_factory([{"params": [p], "weight_decay": 0.0}])
    for i in range(steps):
        opt.zero_grad()
        p.grad = torch.full((5,), 0.1 * (i + 1))
        opt.step()
    return p.detach().clone()


class _NoFusedSGD(torch.optim.SGD):
    """SGD as torch 2.0-2.2 has it: no ``fused`` parameter."""

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, *, maximize=False,
                 foreach=None, differentiable=False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov, maximize=maximize, foreach=foreach, differentiable=differentiable)


class _OldestSGD(torch.optim.SGD):
    """SGD with neither ``fused`` nor ``foreach``."""

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov)


class _FusedRefusedSGD(torch.optim.SGD):
    """SGD whose fused kernel does not take these parameters' device (torch 2.3 on a CPU)."""

    def __init__(self, params, lr, momentum=0, nesterov=False, foreach=None, fused=None):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported "
                               "devices: ['cuda']")
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov, foreach=foreach)


@pytest.mark.parametrize("nesterov", [False, True])
def test_make_sgd_falls_back_to_the_same_update(monkeypatch, nesterov):
    def make(groups):
        return compat.make_sgd(groups, 0.1, 0.875, nesterov, fused=True)[0]

    reference = _train(lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.875, nesterov=nesterov))
    impls = {}
    for cls in (torch.optim.SGD, _NoFusedSGD, _OldestSGD, _FusedRefusedSGD):
        monkeypatch.setattr(torch.optim, "SGD", cls)
        groups = [{"params": [torch.nn.Parameter(torch.zeros(1))]}]
        impls[cls.__name__] = compat.make_sgd(groups, 0.1, 0.875, nesterov, fused=True)[1]
        assert torch.allclose(_train(make), reference, rtol=0, atol=1e-6), cls.__name__
    fused_here = "fused" in inspect.signature(torch.optim.SGD.__init__).parameters
    assert impls["_NoFusedSGD"] == impls["_FusedRefusedSGD"] == compat.SgdImpl.FOREACH
    assert impls["_OldestSGD"] == compat.SgdImpl.FOR_LOOP
    assert impls["SGD"] in ((compat.SgdImpl.FUSED, compat.SgdImpl.FOREACH) if fused_here else
                            (compat.SgdImpl.FOREACH,))
    monkeypatch.undo()
    assert compat.make_sgd([torch.nn.Parameter(torch.zeros(1))], 0.1, 0.9, False, fused=False)[1] == "foreach"


def test_compile_model_refuses_in_one_line(monkeypatch):
    model = torch.nn.Linear(2, 2)
    monkeypatch.delattr(torch, "compile", raising=False)
    with pytest.raises(ValueError, match="--compile needs torch.compile"):
        compat.compile_model(model)

    def refuses(m):
        raise RuntimeError("Python 3.11+ not yet supported for torch.compile")

    monkeypatch.setattr(torch, "compile", refuses, raising=False)
    with pytest.raises(ValueError, match="cannot compile here: Python 3.11"):
        compat.compile_model(model)


@pytest.mark.parametrize("takes_device_id", [True, False])
def test_init_process_group_passes_device_id_only_where_taken(monkeypatch, takes_device_id):
    import torch.distributed as dist

    calls = []

    def new(backend, device_id=None):
        calls.append((backend, device_id))

    def old(backend):
        calls.append((backend, "absent"))

    monkeypatch.setattr(dist, "init_process_group", new if takes_device_id else old)
    compat.init_process_group("nccl", torch.device("cuda", 1))
    compat.init_process_group("gloo", None)
    assert calls == ([("nccl", torch.device("cuda", 1)), ("gloo", None)] if takes_device_id else
                     [("nccl", "absent"), ("gloo", "absent")])


def test_shared_uint8_with_and_without_the_private_allocator(monkeypatch):
    a = compat.new_shared_uint8(64)
    monkeypatch.setattr(torch.UntypedStorage, "_new_shared", None, raising=False)
    b = compat.new_shared_uint8(64)
    assert a.shape == b.shape == (64,) and a.dtype == b.dtype == torch.uint8 and a.is_shared() and b.is_shared()


# ----------------------------------------------------------------------------------------------- torchvision

def _jpegs(tmp_path, n=3):
    from torchvision.io import read_file

    out = []
    for i in range(n):
        f = tmp_path / f"{i}.jpg"
        Image.new("RGB", (16 + 8 * i, 12), (40 * i, 100, 200)).save(f, quality=90)
        out.append(read_file(str(f)))
    return out


def test_decode_jpegs_batched_or_one_by_one_gives_the_same_pixels(tmp_path, monkeypatch):
    from torchvision.io import ImageReadMode

    datas = _jpegs(tmp_path)
    first = compat.decode_jpegs(datas, ImageReadMode.RGB, "cpu")
    monkeypatch.setattr(compat, "_batched_decode_jpeg", lambda: False)  # torchvision < 0.19
    one_by_one = compat.decode_jpegs(datas, ImageReadMode.RGB, "cpu")
    assert len(first) == len(one_by_one) == 3 and compat.decode_jpegs([], ImageReadMode.RGB, "cpu") == []
    for a, b, d in zip(first, one_by_one, datas):
        assert torch.equal(a, b) and torch.equal(a, compat.decode_jpeg_one(d, ImageReadMode.RGB, "cpu"))
        assert a.shape[0] == 3


def _tree(root):
    for cls, n in (("a", 2), ("b", 0), ("c", 1)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8)).save(root / cls / f"{i}.jpg")
    (root / "a" / "notes.txt").write_text("not an image")


def test_image_folder_allow_empty_fallback_lists_like_torchvision(tmp_path, monkeypatch):
    from torchvision.datasets import ImageFolder

    _tree(tmp_path)
    cls = compat.image_folder_class()
    ours = cls(str(tmp_path), allow_empty=True)
    assert [(os.path.relpath(p, tmp_path), t) for p, t in ours.samples] == [
        (os.path.join("a", "0.jpg"), 0), (os.path.join("a", "1.jpg"), 0), (os.path.join("c", "0.jpg"), 2)]
    assert ours.classes == ["a", "b", "c"]
    with pytest.raises(FileNotFoundError):
        cls(str(tmp_path), allow_empty=False)
    # the fallback class on this torchvision (as torchvision < 0.18 gets it), against the real one when present
    real = inspect.signature(ImageFolder.__init__)
    monkeypatch.setattr(compat.inspect, "signature", lambda obj, *a, **k: real.replace(parameters=[
        p for p in real.parameters.values() if p.name != "allow_empty"]) if obj is ImageFolder.__init__ else
        inspect.Signature.from_callable(obj, *a, **k))
    compat.image_folder_class.cache_clear()
    try:
        fallback = compat.image_folder_class()
        assert fallback is not ImageFolder and issubclass(fallback, ImageFolder)
        assert fallback(str(tmp_path), allow_empty=True).samples == ours.samples
        with pytest.raises(FileNotFoundError):
            fallback(str(tmp_path), allow_empty=False)
    finally:
        compat.image_folder_class.cache_clear()


def test_shutdown_cancelling_with_and_without_cancel_futures(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    for has_cancel in (True, False):
        pool = ThreadPoolExecutor(1)
        gate = __import__("threading").Event()
        first = pool.submit(gate.wait, 5)
        queued = [pool.submit(lambda: 1) for _ in range(3)]
        if not has_cancel:  # Python 3.8's Executor.shutdown(wait) has no cancel_futures
            real = pool.shutdown
            monkeypatch.setattr(pool, "shutdown", lambda wait=True: real(wait=wait))
        compat.shutdown_cancelling(pool, [first, *queued])
        gate.set()
        first.result(timeout=5)
        assert all(f.cancelled() for f in queued), has_cancel


def test_numpy_interop_is_checked_in_one_line(monkeypatch):
    compat.check_numpy_interop()  # this stack's torch and NumPy work together

    def no_numpy(array):
        raise RuntimeError("Numpy is not available")

    monkeypatch.setattr(torch, "from_numpy", no_numpy)
    with pytest.raises(ValueError, match=r"cannot use NumPy .*Numpy is not available.*pip install 'numpy<2'"):
        compat.check_numpy_interop()


def test_foreach_copy_with_and_without_the_foreach_kernel(monkeypatch):
    src = [torch.arange(3.0), torch.ones(2, 2)]
    dst = [torch.zeros(3), torch.zeros(2, 2)]
    compat.foreach_copy_(dst, src)
    assert all(torch.equal(d, s) for d, s in zip(dst, src))
    monkeypatch.delattr(torch, "_foreach_copy_", raising=False)  # torch 2.0
    dst = [torch.zeros(3), torch.zeros(2, 2)]
    compat.foreach_copy_(dst, src)
    assert all(torch.equal(d, s) for d, s in zip(dst, src))


def test_strided_uint8_resize_is_tried_and_crops_are_right_either_way(monkeypatch):
    """torch 2.0 misreads a strided uint8 view in its antialiased resize: the train crop is then copied first;
    both ways give PIL's pixels."""
    import numpy as np

    from pipeline.read import transforms as T

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    box = (17, 9, 17 + 90, 9 + 70)
    ref = torch.from_numpy(np.asarray(Image.fromarray(rgb[9:79, 17:107]).resize((24, 24), Image.BILINEAR)))
    results = []
    for trusted in (compat.aa_resize_reads_strided_uint8(), False):
        monkeypatch.setattr(T, "aa_resize_reads_strided_uint8", lambda: trusted)
        out = T._resize_crop(rgb, box, 24, torch.empty((24, 24, 3), dtype=torch.uint8), False)
        results.append(out.clone())
        assert (out.float() - ref.float()).abs().mean() < 1.0, trusted
    assert torch.equal(results[0], results[1])


def test_checkpoint_bytes_travel_as_tensors_that_every_weights_only_loader_reads():
    """torch 2.0 / 2.1's ``torch.load(weights_only=True)`` refuses pickled bytes (a DALI loader state holds some):
    checkpoints store them as uint8 tensors and give them back as bytes; bytes of older checkpoints pass."""
    import io

    from train.checkpoint import BYTES_TAG, bytes_as_tensors, tensors_as_bytes

    state = [{"pipeline": b"\x00\xffDALI", "empty": b"", "n": 3, "nested": {"b": [b"x"]}}, {}]
    stored = bytes_as_tensors(state)
    assert isinstance(stored[0]["pipeline"][BYTES_TAG], torch.Tensor)
    buf = io.BytesIO()
    torch.save(stored, buf)
    buf.seek(0)
    assert tensors_as_bytes(torch.load(buf, weights_only=True)) == state
    assert tensors_as_bytes(state) == state


def test_16_bit_casts_on_a_cpu_are_tried_and_refused_in_one_line_where_absent(monkeypatch):
    from train import precision as P

    cpu = torch.device("cpu")
    assert isinstance(compat.cpu_dtype_supported("float16"), bool)
    assert compat.cpu_dtype_supported("bfloat16") is True  # every supported torch has bfloat16 CPU kernels
    monkeypatch.setattr(P, "cpu_dtype_supported", lambda name: name != "float16")  # torch 2.0 / 2.1
    why = P.unsupported(P.Precision.HALF, cpu)
    assert why is not None and "--precision half needs float16 CPU kernels" in why and "\n" not in why
    assert P.unsupported(P.Precision.FP16, cpu) is None  # FlagPerf's fp16 is a bfloat16 cast
    monkeypatch.setattr(P, "cpu_dtype_supported", lambda name: False)
    assert "--precision fp16 needs bfloat16 CPU kernels" in P.unsupported(P.Precision.FP16, cpu)
    assert P.unsupported(P.Precision.FP32, cpu) is None
    assert P.unsupported(P.Precision.HALF, torch.device("cuda", 0)) is None  # CUDA has float16 kernels


def test_fused_sgd_is_chosen_only_where_a_step_runs(monkeypatch):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))]}]
    monkeypatch.setattr(compat, "_fused_sgd_steps_on", lambda device, dtype: False)  # checked only at step time
    assert compat.make_sgd(groups, 0.1, 0.9, False, fused=True)[1] == compat.SgdImpl.FOREACH


def test_cuda_device_uuid_where_torch_tells_it(monkeypatch):
    class Props:
        uuid = "1234-abcd"

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    assert compat.cuda_device_uuid(0) == "GPU-1234-abcd"
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: object())  # torch 2.0 / 2.1
    assert compat.cuda_device_uuid(0) is None
