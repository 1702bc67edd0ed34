"""Issue 22 item 6: the ``dali`` backend tuned as NVIDIA's ResNet50 pipelines are, each setting in the backend's own
sub-config (:class:`pipeline.backends.DaliConfig`): the flags parse into it, its values reach DALI's operators (the
``mixed`` graph is defined, not built: no GPU here; recording fakes pass DALI's real operators through), the resolved
config JSON and TOML hold them, and on the CPU pipeline the uint8 / float16 outputs normalised on the device give the
float32 batch of the DALI-normalised output, in the same order and crops (no change to the random state)."""

from __future__ import annotations

import argparse

import pytest
import torch

pytest.importorskip("nvidia.dali")

from pipeline.backends import (IMAGENET_MEAN_255, IMAGENET_STD_255, DaliConfig, DaliOutput, LoaderConfig,  # noqa: E402
                               LoaderKind, Split, backend_spec)
from pipeline.backends.dali import DaliLoader, finish_images  # noqa: E402
from pipeline.backends.dali_graph import checked_shards, decoder_options, emitted, make_graph  # noqa: E402
from pipeline.read.info import load_info  # noqa: E402
from tools import train as train_cli  # noqa: E402

CPU = torch.device("cpu")
TUNED = DaliConfig(hw_decoder_load=0.5, device_memory_padding=1 << 20, host_memory_padding=1 << 19,
                   preallocate_width_hint=640, preallocate_height_hint=480)


def test_defaults_are_nvidias_published_settings():
    dali = DaliConfig()
    assert (dali.device_memory_padding, dali.host_memory_padding) == (211025920, 140544512)  # DLE dali.py
    assert dali.hw_decoder_load == 0.99  # MLPerf v3.1 DGX H100 (DALI's own default: 0.65)
    assert (dali.preallocate_width_hint, dali.preallocate_height_hint) == (0, 0)  # DLE / DALI
    assert dali.labels_on_device and dali.output is DaliOutput.FLOAT32  # DALI's ResNet50 example; DLE's FLOAT
    assert backend_spec(LoaderKind.DALI).options is DaliConfig
    assert LoaderConfig().options_for(DaliConfig) == dali


@pytest.mark.parametrize("make, message", [
    (lambda: DaliConfig(hw_decoder_load=1.5), "--dali-hw-decoder-load must be in [0, 1], got 1.5"),
    (lambda: DaliConfig(hw_decoder_load=float("nan")), "--dali-hw-decoder-load must be in [0, 1], got nan"),
    (lambda: DaliConfig(device_memory_padding=-1), "--dali-device-memory-padding must be an integer >= 0, got -1"),
    (lambda: DaliConfig(preallocate_height_hint=2.5),
     "--dali-preallocate-height-hint must be an integer >= 0, got 2.5"),
    (lambda: DaliConfig(output="bf16"), "--dali-output must be float32, float16, uint8, got 'bf16'"),
])
def test_bad_values_are_one_line_errors(make, message):
    with pytest.raises(ValueError) as exc:
        make()
    assert str(exc.value) == message


def parsed(argv):
    return train_cli.config_from_args(train_cli.build_parser().parse_args(["--workers", "1", *argv]))


def test_flags_parse_into_the_dali_sub_config():
    assert parsed([]).loader_cfg.options == ()  # no flag changed: no sub-config, the defaults apply
    cfg = parsed(["--dali-hw-decoder-load", "0.65", "--dali-device-memory-padding", "16777216",
                  "--dali-host-memory-padding", "8388608", "--dali-preallocate-width-hint", "5980",
                  "--dali-preallocate-height-hint", "6430", "--no-dali-labels-on-device", "--dali-output", "uint8"])
    assert cfg.loader_cfg.options_for(DaliConfig) == DaliConfig(
        hw_decoder_load=0.65, device_memory_padding=16777216, host_memory_padding=8388608,
        preallocate_width_hint=5980, preallocate_height_hint=6430, labels_on_device=False, output=DaliOutput.UINT8)
    assert parsed(["--dali-output", "float16"]).loader_cfg.options == (DaliConfig(output=DaliOutput.FLOAT16),)


@pytest.mark.parametrize("argv, line", [
    (["--dali-hw-decoder-load", "1.2"], "--dali-hw-decoder-load must be in [0, 1], got 1.2"),
    (["--dali-output", "bf16"], "argument --dali-output: invalid choice 'bf16' (choose from float32, float16, uint8)"),
    (["--dali-host-memory-padding", "-5"], "argument --dali-host-memory-padding: must be >= 0, got -5"),
])
def test_bad_flags_are_one_line(argv, line, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--loader", "synthetic", *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err and err.splitlines()[0] == f"train: error: {line}"


def test_resolved_config_json_and_toml_hold_the_dali_settings(tmp_path):
    from tools.config_file import parse_args_with_config, write_resolved
    from train.config import config_json

    argv = ["--workers", "1", "--dali-hw-decoder-load", "0.7", "--no-dali-labels-on-device", "--dali-output",
            "float16"]
    parser = train_cli.build_parser()
    cfg = train_cli.config_from_args(parser.parse_args(argv))
    loader = config_json(cfg)["loader_cfg"]
    assert {k: v for k, v in loader.items() if k.startswith("dali_")} == {
        "dali_hw_decoder_load": 0.7, "dali_device_memory_padding": 211025920, "dali_host_memory_padding": 140544512,
        "dali_preallocate_width_hint": 0, "dali_preallocate_height_hint": 0, "dali_labels_on_device": False,
        "dali_output": "float16"}
    toml = write_resolved(train_cli.SCHEMA, parser.parse_args(argv), tmp_path / "run.toml")
    again = parse_args_with_config(train_cli.build_parser(), train_cli.SCHEMA, ["--config", str(toml)])
    assert train_cli.config_from_args(again).loader_cfg.options == cfg.loader_cfg.options


class Recorder:
    """Wraps DALI operators (monkeypatched on their modules) and records each call's keyword arguments and the
    device of its first input, then calls the real operator."""

    def __init__(self, monkeypatch):
        from nvidia.dali import fn

        self.calls: list[tuple[str, str, dict]] = []
        for module, name in ((fn.decoders, "image_random_crop"), (fn.decoders, "image"), (fn, "crop_mirror_normalize"),
                             (fn, "cast")):
            monkeypatch.setattr(module, name, self._wrap(name, getattr(module, name)))

    def _wrap(self, name, real):
        def call(*args, **kwargs):
            self.calls.append((name, getattr(args[0], "device", None) if args else None, dict(kwargs)))
            return real(*args, **kwargs)
        return call

    def of(self, name: str) -> list[tuple[str | None, dict]]:
        return [(device, kwargs) for called, device, kwargs in self.calls if called == name]


def defined(info, options, train, device_id):
    """The loader's graph for ``options`` defined (an unbuilt Pipeline): DALI checks the operators' arguments
    against their schemas here, without a GPU."""
    cfg = LoaderConfig(batch_size=4, image_size=32, workers=2, options=options)
    split = "train" if train else "val"
    return make_graph(cfg, train, checked_shards(info, split), 0, 1, device_id)()


@pytest.mark.parametrize("train", [True, False])
def test_the_mixed_graph_gets_the_nvjpeg_settings_and_device_labels(demo_shards, monkeypatch, train):
    from nvidia.dali import types

    info = load_info(demo_shards)
    rec = Recorder(monkeypatch)
    defined(info, (TUNED,), train, device_id=0)
    (device, decoder), = rec.of("image_random_crop" if train else "image")
    assert device == "cpu" and decoder["device"] == "mixed"  # JPEG bytes in, nvJPEG decodes
    assert (decoder["hw_decoder_load"], decoder["preallocate_width_hint"], decoder["preallocate_height_hint"]) == (
        0.5, 640, 480)
    if train:  # DLE pads nvJPEG's buffers on the train decoder only
        assert (decoder["device_memory_padding"], decoder["host_memory_padding"]) == (1 << 20, 1 << 19)
    else:
        assert "device_memory_padding" not in decoder and "host_memory_padding" not in decoder
    assert [(d, k["dtype"]) for d, k in rec.of("cast") if k["dtype"] == types.INT64] == [("gpu", types.INT64)]
    (_, norm), = rec.of("crop_mirror_normalize")
    assert norm["dtype"] == types.FLOAT and len(norm["mean"]) == 3
    rec.calls.clear()
    defined(info, (DaliConfig(labels_on_device=False, output=DaliOutput.FLOAT16),), train, device_id=0)
    assert not [k for _, k in rec.of("cast") if k["dtype"] == types.INT64]  # labels stay DALI's host int32
    (_, norm), = rec.of("crop_mirror_normalize")
    assert norm["dtype"] == types.FLOAT16 and len(norm["std"]) == 3


def test_the_cpu_graph_takes_no_nvjpeg_setting(demo_shards, monkeypatch):
    from nvidia.dali import types

    rec = Recorder(monkeypatch)
    defined(load_info(demo_shards), (TUNED, DaliConfig(output=DaliOutput.UINT8)), True, device_id=None)
    (_, decoder), = rec.of("image_random_crop")
    assert decoder["device"] == "cpu" and not set(decoder) & set(decoder_options(TUNED, "mixed", True))
    assert not [k for _, k in rec.of("cast") if k["dtype"] == types.INT64]
    (_, norm), = rec.of("crop_mirror_normalize")
    assert norm["dtype"] == types.UINT8 and "mean" not in norm  # the last sub-config wins: uint8, torch normalises


def test_decoder_options_and_what_the_graph_emits():
    assert decoder_options(TUNED, "cpu", True) == {}
    assert decoder_options(TUNED, "mixed", False) == {"hw_decoder_load": 0.5, "preallocate_width_hint": 640,
                                                      "preallocate_height_hint": 480}
    assert decoder_options(TUNED, "mixed", True)["device_memory_padding"] == 1 << 20
    fp16 = (DaliConfig(output="float16"),)
    assert emitted(LoaderConfig(workers=0, options=fp16)) is DaliOutput.FLOAT16
    assert emitted(LoaderConfig(workers=0, options=fp16, normalize=False)) is DaliOutput.UINT8
    assert emitted(LoaderConfig(workers=0)) is DaliOutput.FLOAT32


def test_finish_images_yields_float32_channels_last_without_a_layout_copy():
    nhwc = torch.randint(0, 256, (2, 5, 5, 3), dtype=torch.uint8)
    mean = torch.tensor(IMAGENET_MEAN_255).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD_255).view(1, 3, 1, 1)
    want = (nhwc.permute(0, 3, 1, 2).float() - mean) / std
    for output, data in ((DaliOutput.UINT8, nhwc), (DaliOutput.FLOAT16, want.permute(0, 2, 3, 1).half()),
                         (DaliOutput.FLOAT32, want.permute(0, 2, 3, 1).contiguous())):
        x = finish_images(data, output, True, CPU)
        assert x.dtype == torch.float32 and x.shape == (2, 3, 5, 5), output
        assert x.is_contiguous(memory_format=torch.channels_last), output
        torch.testing.assert_close(x, want, atol=1e-2 if output is DaliOutput.FLOAT16 else 1e-5, rtol=0)
    as_is = want.permute(0, 2, 3, 1).contiguous()
    assert finish_images(as_is, DaliOutput.FLOAT32, True, CPU).data_ptr() == as_is.data_ptr()
    assert finish_images(nhwc, DaliOutput.FLOAT16, False, CPU).dtype == torch.uint8  # normalize off: the values


def batches(info, split, output, epochs=1):
    cfg = LoaderConfig(batch_size=4, image_size=32, workers=1, shuffle_buffer=8, options=(DaliConfig(output=output),))
    loader = DaliLoader(cfg, split, info, CPU)
    out = []
    for e in range(epochs):
        loader.set_epoch(e)
        out += list(loader)
    return out


@pytest.mark.parametrize("split, epochs", [(Split.TRAIN, 2), (Split.VAL, 1)])
def test_uint8_and_float16_outputs_give_the_float32_batches(demo_shards, split, epochs):
    """The CPU pipeline: the same samples, crops and flips whatever DALI emits (the random state does not depend on
    it), and the batch the float32 output gives, within float16's rounding."""
    info = load_info(demo_shards)
    ref = batches(info, split, DaliOutput.FLOAT32, epochs)
    for output, atol in ((DaliOutput.UINT8, 1e-4), (DaliOutput.FLOAT16, 4e-3)):
        got = batches(info, split, output, epochs)
        assert len(got) == len(ref)
        for a, b in zip(got, ref):
            assert a.images.dtype == torch.float32 and a.images.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(a.labels, b.labels) and a.labels.dtype == torch.int64
            torch.testing.assert_close(a.images, b.images, atol=atol, rtol=0)


def test_a_state_restores_under_another_output(demo_shards):
    """What DALI emits is an argument of one operator, not another graph: a train state saved by a float32-output
    loader resumes exactly (same samples, crops, flips) in a uint8-output one."""
    info = load_info(demo_shards)

    def make(output):
        cfg = LoaderConfig(batch_size=4, image_size=32, workers=1, shuffle_buffer=8,
                           options=(DaliConfig(output=output),))
        return DaliLoader(cfg, Split.TRAIN, info, CPU)

    saving = make(DaliOutput.FLOAT32)
    saving.set_epoch(0)
    it = iter(saving)
    next(it), next(it)
    state = saving.state_dict()
    assert "labels" not in state["config"]  # host labels (the CPU pipeline): the graph of every DaliConfig
    rest = list(it)
    resumed = make(DaliOutput.UINT8)
    resumed.set_epoch(0)
    resumed.load_state_dict(state)
    got = list(resumed.iter_from(2))
    assert len(got) == len(rest) == len(saving) - 2
    for a, b in zip(got, rest):
        assert torch.equal(a.labels, b.labels)
        torch.testing.assert_close(a.images, b.images, atol=1e-4, rtol=0)
