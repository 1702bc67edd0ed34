"""Preemption signals (train/preempt.py) and the DDP heartbeat (train/distributed.py), in one process."""

from __future__ import annotations

import signal
from datetime import timedelta

import pytest

from train import distributed, preempt
from train.config import TrainConfig


def test_sigterm_and_sigusr1_only_set_the_flag_and_handlers_are_restored():
    before = {sig: signal.getsignal(sig) for sig in preempt.STOP_SIGNALS}
    signals = preempt.StopSignals()
    with signals:
        assert not signals.requested
        signal.raise_signal(signal.SIGUSR1)  # would end the process under the default handler
        assert signals.signal_name == "SIGUSR1"
        signal.raise_signal(signal.SIGTERM)  # a second stop signal changes nothing and does not abort
        assert signals.signal_name == "SIGUSR1"
    assert {sig: signal.getsignal(sig) for sig in preempt.STOP_SIGNALS} == before


def test_first_sigint_sets_the_flag_with_a_note_and_the_second_aborts(capfd):
    signals = preempt.StopSignals()
    with signals:
        signal.raise_signal(signal.SIGINT)  # no KeyboardInterrupt: the flag only
        assert signals.signal_name == "SIGINT"
        assert "Ctrl-C again to abort" in capfd.readouterr().err
        with pytest.raises(preempt.Aborted, match="second SIGINT"):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_forked_child_ignores_the_signal(monkeypatch):
    signals = preempt.StopSignals()
    with signals:
        monkeypatch.setattr(preempt.os, "getpid", lambda: -1)  # as in a DataLoader worker forked from the run
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
    assert not signals.requested


def test_agreement_single_process_stops_after_the_step_of_the_signal():
    signals = preempt.StopSignals()
    stop = preempt.StopAgreement(signals)
    assert not stop.at_start() and not stop.after_step()
    signals.signal_name = "SIGTERM"
    assert stop.after_step() and stop.agreed


def test_agreement_under_ddp_reads_each_vote_one_step_later():
    """Votes are started after every step and read after the next: every rank sees the same result."""
    started, flags = [], []

    def vote(flag: bool):
        flags.append(flag)
        started.append(True)
        return lambda: any(flags)  # the MAX over ranks of what was voted so far

    signals = preempt.StopSignals()
    stop = preempt.StopAgreement(signals, vote)
    assert not stop.at_start()
    assert not stop.after_step()  # step 1: starts vote(False)
    signals.signal_name = "SIGTERM"
    assert not stop.after_step()  # step 2: vote(False) read, vote(True) started
    assert stop.after_step()  # step 3: vote(True) read: stop
    assert flags == [False, False, True]
    stop.finish()


def test_stop_line_names_signal_step_and_checkpoint():
    line = preempt.stop_line("SIGTERM", 123, 500, "ckpt/ckpt-step00000123.pt", "ckpt")
    assert line == ("stopped by SIGTERM after step 123 of 500; checkpoint ckpt/ckpt-step00000123.pt written; "
                    "continue with --resume")
    assert "no checkpoint" in preempt.stop_line("SIGINT", 3, 10, None, None)


def test_dist_timeout_is_a_config_field_with_a_range_check():
    assert TrainConfig().dist_timeout == 300.0
    with pytest.raises(ValueError, match="--dist-timeout"):
        TrainConfig(dist_timeout=0.5)


def test_the_flag_reaches_the_config():
    from tools import train as train_cli

    cfg = train_cli.config_from_args(train_cli.build_parser().parse_args(["--loader", "synthetic", "--dist-timeout",
                                                                          "30"]))
    assert cfg.dist_timeout == 30.0


def test_init_passes_the_timeout_to_the_process_group(monkeypatch):
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(distributed, "init_process_group", lambda backend, device, timeout: seen.update(t=timeout))
    distributed.init_distributed(42)
    assert seen["t"] == timedelta(seconds=42)


class FakeStore:
    def __init__(self):
        self.data = {}

    def set(self, key, value):
        self.data[key] = value.encode() if isinstance(value, str) else value

    def check(self, keys):
        return all(k in self.data for k in keys)

    def get(self, key):
        return self.data[key]


def test_heartbeat_names_the_rank_that_stopped_answering():
    now = [1000.0]
    exits = []
    env = distributed.DistEnv(0, 3, 0, distributed.torch.device("cpu"))
    store = FakeStore()
    hb = distributed.Heartbeat(env, 30, store=store, clock=lambda: now[0], exit=exits.append)
    hb.beat()
    store.set(distributed.HEARTBEAT_PREFIX + "1", repr(960.0))  # 40 s old
    store.set(distributed.HEARTBEAT_PREFIX + "2", "done")  # finished: never stale
    assert hb.stale(30) == [(1, 40.0)]
    line = distributed.stall_line(hb.stale(30), 30)
    assert line == ("error: rank 1 stopped answering 40 s ago (no heartbeat); the others gave up after "
                    "--dist-timeout 30 s")


def test_a_timed_out_collective_ends_the_process_with_one_line(capfd):
    now = [1000.0]
    exits = []
    env = distributed.DistEnv(1, 2, 0, distributed.torch.device("cpu"))
    store = FakeStore()
    store.set(distributed.HEARTBEAT_PREFIX + "0", repr(985.0))
    hb = distributed.Heartbeat(env, 10, store=store, clock=lambda: now[0], exit=exits.append)
    exc = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 10000ms for recv operation")
    assert distributed.is_timeout(exc) and not distributed.is_timeout(RuntimeError("Connection reset by peer"))
    hb.give_up_after(exc)
    hb.give_up_after(exc)  # once per process
    err = capfd.readouterr().err
    assert exits == [distributed.EXIT_STALLED]
    assert err == ("train: error: rank 0 stopped answering 15 s ago (no heartbeat); the others gave up after "
                   "--dist-timeout 10 s\n")
