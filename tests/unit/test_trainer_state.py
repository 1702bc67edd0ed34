"""The run's state has one owner: the built session is frozen, what changes during a run lives in the
:class:`train.trainer.Trainer`; and the small typed pieces the loop hands around (an epoch's figures, the step
log's sources, the checkpointer's record) do their arithmetic."""

from __future__ import annotations

import dataclasses

import pytest


def test_the_built_session_is_frozen_and_holds_nothing_the_run_changes():
    from train.build import Session

    assert Session.__dataclass_params__.frozen
    names = {f.name for f in dataclasses.fields(Session)}
    assert not names & {"progress", "steplog", "monitor", "train_loader_size"}  # the Trainer's
    assert "train_loader" in names  # the first one built; the current one is the Trainer's


def test_epoch_figures_mean_loss():
    from train.loop import EpochFigures

    figures = EpochFigures(epoch=0, steps=4, resumed_at=0, loss_sum=10.0, train_s=2.0, wait_s=0.5, compute_s=1.0)
    assert figures.loss == 2.5
    assert EpochFigures(0, 0, 0, 3.0, 1.0, 0.0, 1.0).loss == 3.0  # no step: the sum itself, no division by zero
    with pytest.raises(dataclasses.FrozenInstanceError):
        figures.steps = 5


def test_step_sources_count_no_pause_unless_told():
    from train.clock import Stopwatch
    from train.steplog import StepSources

    sources = StepSources(Stopwatch(), Stopwatch(), lambda: 2, lambda: 0.1)
    assert (sources.epoch(), sources.lr(), sources.paused()) == (2, 0.1, 0.0)


def test_checkpointer_knows_the_step_of_its_last_checkpoint():
    from train.checkpoint import Position
    from train.loop import Checkpointer

    ckpt = Checkpointer(session=None, clock=None, position=Position())
    assert not ckpt.has(0)
    ckpt.steps += [3, 6]
    assert ckpt.has(6) and not ckpt.has(3)


def test_a_report_keeps_versions_labels_and_the_machine_apart():
    from train.report import Labels, Origin, Software

    assert [f.name for f in dataclasses.fields(Labels)] == ["config", "fix_hp", "argv"]
    assert Software({"torch": "2.0"}).to_json() == {"versions": {"torch": "2.0"}}
    assert [f.name for f in dataclasses.fields(Origin)] == ["environment", "identity"]
