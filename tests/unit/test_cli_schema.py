"""Issue 21 item 5: every console script builds its flags from its config dataclasses through one mechanism
(:class:`tools.cli_common.Components`, defaults read with :func:`pipeline.schema.default_of`), with one seed in
``train``, and ``shard-imagenet`` parses its flags without importing torch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.schema import default_of
from tools.cli_common import Component, Components, Option

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Inner:
    size: int = 3
    name: str = "x"


@dataclasses.dataclass(frozen=True)
class Root:
    inner: Inner = dataclasses.field(default_factory=Inner)
    count: int = 1
    items: tuple = dataclasses.field(default_factory=lambda: (1, 2))
    required: int = dataclasses.field(default=0)
    on: bool = True


COMPONENTS = Components((Component(Root, None, None), Component(Inner, "inner", "inner")))


def test_default_of_reads_defaults_and_calls_factories():
    assert default_of(Root, "count") == 1 and default_of(Root, "items") == (1, 2)
    assert default_of(Root, "inner") == Inner()
    with pytest.raises(KeyError):
        default_of(Root, "nope")


def test_default_of_a_field_without_default_is_a_key_error():
    @dataclasses.dataclass(frozen=True)
    class NoDefault:
        src: Path

    with pytest.raises(KeyError, match="NoDefault.src"):
        default_of(NoDefault, "src")


def test_components_is_a_mapping_of_attr_and_table():
    assert dict(COMPONENTS.items()) == {Root: (None, None), Inner: ("inner", "inner")}
    assert len(COMPONENTS) == 2 and COMPONENTS[Inner] == ("inner", "inner") and Root in COMPONENTS
    with pytest.raises(KeyError):
        COMPONENTS[int]


def test_option_reads_its_default_table_and_field_from_the_schema():
    size = COMPONENTS.option(Inner, "size", "--size", int, "the size")
    assert (size.field, size.table, size.default, size.dest) == ("inner.size", "inner", 3, "size")
    assert size.help_text() == "the size (default: 3)"
    count = COMPONENTS.option(Root, "count", "--count", int, "how many", table="inner", aliases=("-n",))
    assert (count.field, count.table, count.default, count.aliases) == ("count", "inner", 1, ("-n",))
    off = COMPONENTS.option(Root, "on", "--no-on", help="turn it off", invert=True)  # a switch: off by default
    assert off.default is False and off.invert
    both = COMPONENTS.option(Root, "on", "--on", negatable=True, help="on or off")
    assert both.default is True
    given = COMPONENTS.option(Root, "count", "--count", int, default=None)
    assert given.default is None


def test_show_default_false_keeps_the_help_as_written():
    quiet = COMPONENTS.option(Root, "count", "--count", int, "how many (default: one)", show_default=False)
    assert quiet.help_text() == "how many (default: one)"
    bare = COMPONENTS.option(Root, "count", "--count", int, show_default=False)
    assert bare.help_text() == ""
    assert COMPONENTS.option(Root, "count", "--count", int, "n = {default}").help_text() == "n = 1"


def test_field_values_and_build_make_the_nested_config():
    import argparse

    options = (COMPONENTS.option(Root, "count", "--count", int), COMPONENTS.option(Inner, "size", "--size", int),
               COMPONENTS.option(Root, "on", "--no-on", invert=True), Option("--other", None, None, int))
    args = argparse.Namespace(count=5, size=9, no_on=True, other=7)
    values = COMPONENTS.field_values(options, args)
    assert values == {None: {"count": 5, "on": False}, "inner": {"size": 9}}
    assert COMPONENTS.build(values, required=4) == Root(inner=Inner(size=9), count=5, on=False, required=4)


def test_shard_imagenet_flags_are_shard_configs_defaults():
    from pipeline.shard.config import ShardConfig
    from tools import shard_imagenet

    args = shard_imagenet.build_parser().parse_args(["src"])
    assert shard_imagenet.config_from_args(args) == ShardConfig(src=Path("src"))
    cfg = shard_imagenet.config_from_args(shard_imagenet.build_parser().parse_args(
        ["src", "--out", "o", "--seed", "3", "--no-resume", "--layout", "kaggle", "--classes", "c.txt",
         "--no-progress"]))
    assert (cfg.out, cfg.seed, cfg.resume, cfg.progress) == (Path("o"), 3, False, False)
    assert (cfg.layout.layout.value, cfg.layout.classes_file) == ("kaggle", Path("c.txt"))


def test_io_bench_flags_build_its_config():
    from tools import io_bench
    from train.iobench.config import IoBenchConfig

    args = io_bench.build_parser().parse_args(["--data", "d", "--steps", "4", "--loader", "cpu"])
    cfg = io_bench.config_from_args(args)
    assert cfg == IoBenchConfig(data=Path("d"), train_steps=4, loaders=(io_bench.LoaderKind.CPU,))


def test_train_has_one_seed():
    from pipeline.backends import LoaderConfig
    from tools import train as train_cli
    from train.config import TrainConfig

    cfg = train_cli.config_from_args(train_cli.build_parser().parse_args(["--seed", "7", "--workers", "0"]))
    assert cfg.seed == cfg.loader_cfg.seed == 7
    assert TrainConfig(seed=3, loader_cfg=LoaderConfig(seed=9)).loader_cfg.seed == 3  # the run's seed wins


def test_shard_imagenet_help_imports_no_torch():
    code = ("import sys; from tools import shard_imagenet; shard_imagenet.build_parser().format_help(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@dataclasses.dataclass(frozen=True)
class Sub:
    samples: int = 10


@dataclasses.dataclass(frozen=True)
class Holder:
    size: int = 1
    options: tuple = ()


def test_a_collected_sub_config_joins_its_tuple_only_where_a_flag_changes_it():
    import argparse

    components = Components((Component(Holder, None, None), Component(Sub, "options.sub", "t", collected=True)))
    samples = components.option(Sub, "samples", "--sub-samples", int)
    assert (samples.field, samples.table, samples.default) == ("options.sub.samples", "t", 10)
    options = (samples, components.option(Holder, "size", "--size", int))
    unchanged = components.field_values(options, argparse.Namespace(sub_samples=10, size=2))
    assert components.build(unchanged) == Holder(size=2)
    changed = components.field_values(options, argparse.Namespace(sub_samples=3, size=1))
    assert components.build(changed) == Holder(options=(Sub(samples=3),))
