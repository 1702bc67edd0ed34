"""Feature-detected fallbacks, so the project runs on CPython 3.8–3.13 and torch 2.0–2.14 (torchvision 0.15–0.29).

This module is the one owner of every Python, torch and torchvision API that the oldest supported stack (FlagPerf's
MetaX C500 image: Python 3.8, torch 2.0.1, torchvision 0.15.2) lacks. Each entry picks the newer API where it
exists and an equivalent older path where it does not, by looking at what is there (``hasattr``, a signature, one
tiny trial call), never by parsing version strings. Everywhere else the project calls these names instead of the
newer APIs; ``python -m tools.check_compat`` (run by ``make test``) fails on a newer API used outside this module.

What each fallback changes, if anything, is said in its docstring; the metrics JSON records the choices that can
change a run's speed (``optimizer_impl``, ``grad_scaler_syncs_per_step``).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import subprocess
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

if TYPE_CHECKING:  # torch is imported inside the functions that need it: the Python-level part is torch-free
    import torch

# --------------------------------------------------------------------------------------------------- Python

#: ``functools.cache`` (3.9+) or the identical ``lru_cache(maxsize=None)`` before it.
cache: Callable = getattr(functools, "cache", None) or functools.lru_cache(maxsize=None)

def _toml_module():
    """The standard library's TOML reader (3.11+), else the tomli backport it came from (the same API; a
    dependency below 3.11, see pyproject.toml). Imported when first needed, so that the rest of this module
    works without either (e.g. ``benchmarks/gpu_check.py`` on a machine with only torch)."""
    try:
        import tomllib  # novermin

        return tomllib
    except ImportError:
        import tomli

        return tomli


class TOMLDecodeError(ValueError):
    """A TOML text that does not parse (raised by :func:`toml_loads` for tomllib's / tomli's own error)."""


def toml_loads(text: str) -> dict:
    """``tomllib.loads(text)`` (tomli's before Python 3.11).

    Raises:
        TOMLDecodeError: ``text`` is not valid TOML (the parser's message kept).
    """
    toml = _toml_module()
    try:
        return toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise TOMLDecodeError(str(exc)) from None


class _BooleanOptionalAction(argparse.Action):
    """``--flag`` / ``--no-flag`` pairs setting True / False: what ``argparse.BooleanOptionalAction`` (3.9+) does."""

    def __init__(self, option_strings: Sequence[str], dest: str, default: Any = None, required: bool = False,
                 help: str | None = None, metavar: Any = None):  # noqa: A002 - argparse's keyword name
        names = []
        for name in option_strings:
            names.append(name)
            if name.startswith("--"):
                names.append("--no-" + name[2:])
        super().__init__(option_strings=names, dest=dest, nargs=0, default=default, required=required, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.option_strings:
            setattr(namespace, self.dest, not option_string.startswith("--no-"))

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


#: ``argparse.BooleanOptionalAction`` where present (3.9+), else an equivalent action.
BooleanOptionalAction = getattr(argparse, "BooleanOptionalAction", None) or _BooleanOptionalAction


def zip_strict(*iterables: Iterable) -> Iterator[tuple]:
    """``zip(*iterables, strict=True)`` (3.10+) on every Python: tuples of the i-th items.

    Raises:
        ValueError: the iterables do not all have the same length (raised when the shortest one ends).
    """
    missing = object()
    iterators = [iter(it) for it in iterables]
    while True:
        items = tuple(next(it, missing) for it in iterators)
        ended = [item is missing for item in items]
        if all(ended):
            return
        if any(ended):
            raise ValueError(f"zip_strict: argument {ended.index(True) + 1} is shorter than the others")
        yield items


def remove_suffix(text: str, suffix: str) -> str:
    """``text.removesuffix(suffix)`` (3.9+): ``text`` without ``suffix`` at its end, if it ends with it."""
    return text[:-len(suffix)] if suffix and text.endswith(suffix) else text


def new_process_group_kwargs() -> dict:
    """Keyword arguments that start a ``subprocess.Popen`` child in a process group of its own (so that one
    ``killpg`` reaches it and all its children): ``process_group=0`` (3.11+), else ``preexec_fn=os.setpgrp``
    (the same ``setpgid(0, 0)`` in the child, before exec)."""
    if "process_group" in inspect.signature(subprocess.Popen).parameters:
        return {"process_group": 0}
    return {"preexec_fn": os.setpgrp}


def shutdown_cancelling(executor, futures: Iterable = ()) -> None:
    """Stop ``executor`` now: ``executor.shutdown(wait=False, cancel_futures=True)`` (3.9+); before 3.9 each of
    ``futures`` (the caller's submitted ones) not yet running is cancelled, then ``shutdown(wait=False)``."""
    if "cancel_futures" in inspect.signature(executor.shutdown).parameters:
        executor.shutdown(wait=False, cancel_futures=True)
        return
    for future in futures:
        future.cancel()
    executor.shutdown(wait=False)


# ---------------------------------------------------------------------------------------------------- torch

@cache
def upsample_aa_out() -> Callable | None:
    """The aten kernel behind ``F.interpolate(mode="bilinear", antialias=True)``, callable with ``out=`` (a
    private entry point, present in torch 2.0–2.14), or None: then callers resize with ``F.interpolate`` and
    copy the result (the same pixels, one more tensor)."""
    import torch

    return getattr(getattr(torch._C, "_nn", None), "_upsample_bilinear2d_aa", None)


@cache
def aa_resize_reads_strided_uint8() -> bool:
    """Whether torch's antialiased bilinear resize of a uint8 image reads a strided view (a crop of a larger HWC
    array, seen as 1×3×h×w) correctly, tried once on a 24×40 view. torch 2.0's does not (its channels-last uint8
    kernel assumes compact rows: up to 34/255 off on the trial); then callers hand it a compact copy of the crop."""
    import torch
    import torch.nn.functional as F

    full = torch.arange(24 * 40 * 3, dtype=torch.int64).mul_(7919).remainder_(251).to(torch.uint8).view(24, 40, 3)
    view = full[2:20, 4:36].permute(2, 0, 1).unsqueeze(0)
    compact = view.contiguous(memory_format=torch.channels_last)
    kwargs = dict(size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
    return torch.equal(F.interpolate(view, **kwargs), F.interpolate(compact, **kwargs))


def new_shared_uint8(numel: int) -> torch.Tensor:
    """An uninitialised 1-D uint8 tensor of ``numel`` bytes allocated directly in shared memory
    (``UntypedStorage._new_shared``, private, present in torch 2.0–2.14), else made and then moved there with
    ``share_memory_()`` (one extra copy)."""
    import torch

    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
    if new_shared is None:
        return torch.empty(numel, dtype=torch.uint8).share_memory_()
    return torch.empty(0, dtype=torch.uint8).set_(new_shared(numel))


def check_numpy_interop() -> None:
    """Check that torch can use the installed NumPy (``torch.from_numpy``), which every decode path needs.

    torch releases before 2.3 were built against NumPy 1.x and cannot use NumPy 2 ("Numpy is not available").

    Raises:
        ValueError: they cannot (one line saying which versions and what to install).
    """
    import numpy as np
    import torch

    try:
        torch.from_numpy(np.zeros(1, dtype=np.uint8))
    except RuntimeError as exc:
        raise ValueError(f"torch {torch.__version__} cannot use NumPy {np.__version__} ({str(exc).strip()}): "
                         f"torch before 2.3 needs NumPy 1.x: pip install 'numpy<2'") from None


def foreach_copy_(dst: list, src: list) -> None:
    """``dst[i].copy_(src[i])`` for every i: one ``torch._foreach_copy_`` (torch 2.1+), else a loop of copies
    (the same values)."""
    import torch

    copy = getattr(torch, "_foreach_copy_", None)
    if copy is not None:
        copy(dst, src)
        return
    for d, s in zip(dst, src):
        d.copy_(s)


def grad_scaler(device_type: str):
    """A fresh GradScaler for ``device_type``: ``torch.amp.GradScaler(device)`` (torch 2.3+), else
    ``torch.cuda.amp.GradScaler()`` on CUDA.

    Raises:
        ValueError: no GradScaler for ``device_type`` in this torch (the CPU's arrived with torch 2.3).
    """
    import torch

    amp_scaler = getattr(torch.amp, "GradScaler", None)
    if amp_scaler is not None:
        return amp_scaler(device_type)
    if device_type == "cuda":
        return torch.cuda.amp.GradScaler()
    raise ValueError(f"--precision amp on a {device_type} device needs torch.amp.GradScaler, which torch "
                     f"{torch.__version__} lacks (torch >= 2.3 has it): use --precision fp32 or bf16")


@cache
def cpu_dtype_supported(dtype_name: str) -> bool:
    """Whether this torch runs a model cast to ``dtype_name`` (``"float16"``: ``--precision half``;
    ``"bfloat16"``: ``--precision fp16``, FlagPerf's bfloat16 cast) on the CPU: a 1×1 conv, batch norm, max pool,
    linear and log-softmax in that dtype, tried once. torch 2.0 and 2.1 have no float16 CPU kernels for these
    ("slow_conv2d_cpu" not implemented for 'Half')."""
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, dtype_name)
    x = torch.ones(1, 2, 4, 4, dtype=dtype)
    try:
        y = F.conv2d(x, torch.ones(2, 2, 1, 1, dtype=dtype))
        y = F.batch_norm(y, torch.zeros(2, dtype=dtype), torch.ones(2, dtype=dtype), training=True)
        y = F.max_pool2d(y, 2).flatten(1)
        F.log_softmax(F.linear(y, torch.ones(3, y.shape[1], dtype=dtype)), dim=1)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def cuda_device_uuid(device) -> str | None:
    """The CUDA device's UUID as NVML names it (``GPU-…``), or None where torch does not tell it
    (``get_device_properties(...).uuid`` is absent in torch 2.0 and 2.1)."""
    import torch

    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    return None if uuid is None else f"GPU-{uuid}"


@cache
def autocast_dtype_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``torch.autocast(device_type, dtype=dtype)`` computes in ``dtype`` here, tried once with a 2×2
    matmul on the CPU (torch 2.0's CPU autocast takes only bfloat16 and refuses float16); CUDA's autocast takes
    float16 and bfloat16 in every supported torch."""
    if device_type != "cpu":
        return True
    import warnings

    import torch

    a = torch.ones(2, 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autocast("cpu", dtype=dtype):
                return torch.mm(a, a).dtype == dtype
    except (RuntimeError, ValueError):
        return False


class SgdImpl:
    """How SGD's step runs (the metrics JSON's ``optimizer_impl``): one fused kernel, multi-tensor ``foreach``
    kernels, or a Python loop over parameters."""

    FUSED = "fused"
    FOREACH = "foreach"
    FOR_LOOP = "for-loop"


def make_sgd(groups: list, lr: float, momentum: float, nesterov: bool, fused: bool
             ) -> tuple[torch.optim.SGD, str]:
    """``torch.optim.SGD`` over ``groups`` and the :class:`SgdImpl` it runs with.

    ``fused=True`` asks for the fused kernel (torch 2.3+ on CUDA, later also on CPU); torch checks the device
    only at the first step, so one step on a one-element parameter on the groups' device is tried first. Where
    this torch or this device has none, SGD runs with ``foreach`` (the same update, several kernels) or, without
    that, the for-loop, and the result says so. All three compute the same update (``buf = m·buf + g``, ``p -= lr·buf``, Nesterov
    likewise). With a GradScaler, only the fused one takes the scale and the inf flag on the device; the others
    make GradScaler read the inf flag on the host once a step (one device synchronisation per step).
    """
    import torch

    params = inspect.signature(torch.optim.SGD.__init__).parameters
    kwargs = dict(lr=lr, momentum=momentum, nesterov=nesterov)
    if fused and "fused" in params and _fused_sgd_steps(_first_param(groups)):
        try:
            return torch.optim.SGD(groups, fused=True, **kwargs), SgdImpl.FUSED
        except (RuntimeError, ValueError, TypeError):  # refused for these parameters (e.g. a dtype)
            pass
    if "foreach" in params:
        return torch.optim.SGD(groups, foreach=True, **kwargs), SgdImpl.FOREACH
    return torch.optim.SGD(groups, **kwargs), SgdImpl.FOR_LOOP


def _first_param(groups: list):
    import torch

    for g in groups:
        for p in (g["params"] if isinstance(g, dict) else [g]):
            return p
    return torch.zeros(1)


def _fused_sgd_steps(like) -> bool:
    """Whether fused SGD takes a step on ``like``'s device and dtype here (tried once per device and dtype)."""
    return _fused_sgd_steps_on(str(like.device), like.dtype)


@cache
def _fused_sgd_steps_on(device: str, dtype) -> bool:
    import torch

    p = torch.zeros(1, device=device, dtype=dtype, requires_grad=True)
    p.grad = torch.zeros_like(p)
    try:
        torch.optim.SGD([p], lr=0.1, momentum=0.9, fused=True).step()
    except (RuntimeError, ValueError, TypeError, NotImplementedError):
        return False
    return True


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model)``.

    Raises:
        ValueError: this torch has no ``torch.compile``, or it refuses this Python (one line saying so).
    """
    import torch

    compile_fn = getattr(torch, "compile", None)
    if compile_fn is None:
        raise ValueError(f"--compile needs torch.compile, which torch {torch.__version__} lacks")
    try:
        return compile_fn(model)
    except RuntimeError as exc:  # e.g. torch 2.0 on Python 3.11+: "Python 3.11+ not yet supported for torch.compile"
        raise ValueError(f"--compile: torch {torch.__version__} cannot compile here: {exc}") from None


def init_process_group(backend: str, device: torch.device | None = None, timeout: Any = None) -> None:
    """``torch.distributed.init_process_group(backend)`` from the environment (torchrun's variables), bound to
    ``device`` (``device_id=``, torch 2.3+: NCCL connects eagerly and knows the rank's GPU) where supported;
    ``timeout`` (a ``datetime.timedelta``; None: torch's default) bounds its collectives and store reads."""
    import torch.distributed as dist

    kwargs = {"timeout": timeout} if timeout is not None else {}
    if device is not None and "device_id" in inspect.signature(dist.init_process_group).parameters:
        dist.init_process_group(backend, device_id=device, **kwargs)
    else:
        dist.init_process_group(backend, **kwargs)


# ----------------------------------------------------------------------------------------------- torchvision

@cache
def _batched_decode_jpeg() -> bool:
    """Whether ``torchvision.io.decode_jpeg`` takes a list of tensors (torchvision 0.19+), tried once on a
    1×1 JPEG on the CPU."""
    import torch
    from torchvision.io import decode_jpeg, encode_jpeg

    one = encode_jpeg(torch.zeros(3, 1, 1, dtype=torch.uint8))
    try:
        out = decode_jpeg([one])
    except (RuntimeError, TypeError):
        return False
    return isinstance(out, list)


def decode_jpegs(datas: list, mode, device: torch.device | str = "cpu") -> list:
    """``torchvision.io.decode_jpeg`` of each 1-D uint8 tensor in ``datas`` on ``device``: one batched call
    (batched nvJPEG on CUDA, torchvision 0.19+), else one call per image (the same pixels).

    Raises:
        RuntimeError: a stream does not decode (as ``decode_jpeg`` raises it).
    """
    from torchvision.io import decode_jpeg

    if not datas:
        return []
    if _batched_decode_jpeg():
        return list(decode_jpeg(list(datas), mode=mode, device=device))
    return [decode_jpeg(data, mode=mode, device=device) for data in datas]


def decode_jpeg_one(data: torch.Tensor, mode, device: torch.device | str = "cpu") -> torch.Tensor:
    """``torchvision.io.decode_jpeg`` of one 1-D uint8 tensor (an API every supported torchvision has)."""
    from torchvision.io import decode_jpeg

    return decode_jpeg(data, mode=mode, device=device)


@cache
def image_folder_class():
    """``torchvision.datasets.ImageFolder`` where it takes ``allow_empty`` (torchvision 0.18+: class folders
    without images keep their class index), else a subclass that takes it too.

    The subclass lists the files of every class folder itself, with torchvision's extension rule and the same
    sorted order, when ``allow_empty`` is True, and leaves the listing to torchvision otherwise, which raises
    ``FileNotFoundError`` on an empty class folder as the newer one does.
    """
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    if "allow_empty" in inspect.signature(ImageFolder.__init__).parameters:
        return ImageFolder

    class ImageFolderAllowingEmpty(ImageFolder):
        """ImageFolder with ``allow_empty`` on a torchvision that has none (< 0.18)."""

        def __init__(self, root, *args, allow_empty: bool = False, **kwargs):
            self._allow_empty = allow_empty  # read by make_dataset, which the base __init__ calls
            super().__init__(root, *args, **kwargs)

        def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=None):
            # allow_empty: passed only by a torchvision that has it (then this class is not used outside tests)
            if not self._allow_empty:
                return super().make_dataset(directory, class_to_idx, extensions, is_valid_file)
            if extensions is None and is_valid_file is None:
                extensions = IMG_EXTENSIONS
            valid = is_valid_file or (lambda path: has_file_allowed_extension(path, extensions))
            samples = []
            for name in sorted(class_to_idx):
                folder = os.path.join(os.path.expanduser(directory), name)
                if not os.path.isdir(folder):
                    continue
                for base, _, files in sorted(os.walk(folder, followlinks=True)):
                    for fname in sorted(files):
                        path = os.path.join(base, fname)
                        if valid(path):
                            samples.append((path, class_to_idx[name]))
            return samples

    return ImageFolderAllowingEmpty


__all__ = ["BooleanOptionalAction", "SgdImpl", "TOMLDecodeError", "autocast_dtype_supported",
           "cache", "compile_model", "decode_jpeg_one", "decode_jpegs", "grad_scaler", "image_folder_class",
           "init_process_group", "make_sgd", "new_process_group_kwargs", "new_shared_uint8", "remove_suffix", "shutdown_cancelling",
           "aa_resize_reads_strided_uint8", "check_numpy_interop", "cpu_dtype_supported",
           "cuda_device_uuid", "foreach_copy_",
           "toml_loads", "upsample_aa_out", "zip_strict"]
