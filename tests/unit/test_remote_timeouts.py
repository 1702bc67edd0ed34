"""Remote shards under a server that accepts and never answers, or stalls mid-body (issue 20, item 6): a timeout
(``--remote-timeout``), bounded retries (``--remote-retries``) each named on stderr, then one line naming the URL
and what to do; a retry mid-shard neither repeats nor drops a sample. Every read of remote data is covered: the
``_info.json`` / ``classes.txt`` fetch (:func:`pipeline.read.tarstream.read_location`) and the shards.

The old code waited up to 6.7 minutes (curl's 60 s stall limit × 6 tries) and took no options: each test here
fails on it (no ``RemoteOptions`` / ``--remote-timeout``), and would otherwise outlast its bound."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from pipeline.backends import LoaderConfig, LoaderKind, Split, build_loader
from pipeline.dataset import DatasetError
from pipeline.read.info import load_info
from pipeline.read.tarstream import RemoteOptions, ShardReadError, iter_samples, read_location
from tools import train as train_cli

CPU = torch.device("cpu")
FAST = RemoteOptions(timeout_s=1, retries=1)
BOUND_S = 20  # far above the 2 × 1 s these reads wait, far below the old code's minutes


@pytest.fixture()
def silent_server():
    """A TCP server that accepts every connection and never sends a byte; yields (URL prefix, accepted count)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.2)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def serve():
        while not done.is_set():
            try:
                accepted.append(sock.accept()[0])
            except OSError:
                continue
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/shards", accepted
    finally:
        done.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        sock.close()


class _StallingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves ``server.root``; a file in ``server.stalls`` (name → stalls left) is answered with its headers and
    half its body, then nothing until the test ends; one in ``server.unavailable`` (name → times left) with 503."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.lstrip("/")
        path = Path(self.server.root) / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.server.requests.append(name)
        if self.server.unavailable.get(name, 0) > 0:
            self.server.unavailable[name] -= 1
            self.send_error(503)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.server.stalls.get(name, 0) > 0:
            self.server.stalls[name] -= 1
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.server.release.wait(30)
            return
        self.wfile.write(data)


@pytest.fixture()
def stalling_root(demo_shards):
    """``demo_shards`` over HTTP through :class:`_StallingHandler`; yields the server (set ``stalls`` on it)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StallingHandler)
    server.daemon_threads = True
    server.root, server.stalls, server.requests, server.release = str(demo_shards), {}, [], threading.Event()
    server.unavailable = {}
    server.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def test_a_server_that_never_answers_is_retried_then_one_line(silent_server, capsys):
    url, accepted = silent_server
    t0 = time.monotonic()
    with pytest.raises(ShardReadError) as err:
        read_location(url + "/imagenet-train-000003.tar", FAST)
    assert time.monotonic() - t0 < BOUND_S
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{url}/imagenet-train-000003.tar: no answer in 1 s (the first try and 1 retry); ")
    assert "--remote-timeout" in message and "--remote-retries" in message
    notes = capsys.readouterr().err.splitlines()
    assert [n.split(": ", 1)[1] for n in notes] == [
        f"shard {url}/imagenet-train-000003.tar: no answer in 1 s, retry 1 of 1"]
    assert len(accepted) == 2  # the first try and one retry, no more


def test_train_stops_in_one_line_when_the_info_fetch_never_answers(silent_server, capsys):
    url, accepted = silent_server
    t0 = time.monotonic()
    code = train_cli.main(["--data", url, "--loader", "cpu", "--remote-timeout", "1", "--remote-retries", "1",
                           "--batch-size", "4", "--image-size", "32", "--workers", "0", "--max-steps", "1"])
    assert code == 2 and time.monotonic() - t0 < BOUND_S
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[0].endswith(f"file {url}/_info.json: no answer in 1 s, retry 1 of 1")
    assert len(err) == 2 and err[1].startswith(f"train: error: {url}/_info.json: cannot fetch: no answer in 1 s (the "
                                               f"first try and 1 retry); check that the server is up")
    assert len(accepted) == 2


def test_a_stall_mid_shard_resumes_without_repeating_or_dropping_a_sample(stalling_root, demo_shards, capsys):
    name = "imagenet-train-000001.tar"
    stalling_root.stalls[name] = 1
    local = [key for key, _ in iter_samples(str(demo_shards / name))]
    remote = list(iter_samples(stalling_root.url + name, remote=FAST))
    assert [key for key, _ in remote] == local
    assert remote == list(iter_samples(str(demo_shards / name)))  # every member's bytes too
    assert stalling_root.requests == [name, name]
    size = (demo_shards / name).stat().st_size
    note = capsys.readouterr().err.strip()
    assert note.endswith(f"shard {stalling_root.url}{name}: no data for 1 s after {size // 2} bytes, retry 1 of 1")


def test_a_shard_that_always_stalls_is_one_line(stalling_root):
    name = "imagenet-val-000000.tar"
    stalling_root.stalls[name] = 3
    t0 = time.monotonic()
    with pytest.raises(ShardReadError, match=rf"{name}: no data for 1 s after \d+ bytes \(the first try and 1 "
                                             rf"retry\); check that the server is up"):
        list(iter_samples(stalling_root.url + name, remote=FAST))
    assert time.monotonic() - t0 < BOUND_S


def test_the_cpu_loader_retries_a_stalled_shard_in_its_workers(stalling_root, demo_shards, tmp_path):
    """Through LoaderConfig's remote_timeout / remote_retries into the DataLoader workers: the same keys as the
    local folder, each once."""
    stalling_root.stalls["imagenet-val-000001.tar"] = 1
    cfg = LoaderConfig(batch_size=4, image_size=32, workers=1, remote_timeout=1, remote_retries=1)
    remote = build_loader(LoaderKind.CPU, cfg, Split.VAL, load_info(stalling_root.url, remote=FAST), CPU)
    local = build_loader(LoaderKind.CPU, cfg, Split.VAL, load_info(demo_shards), CPU)
    try:
        assert [k for b in remote for k in b.keys] == [k for b in local for k in b.keys]
    finally:
        remote.close()
        local.close()
    assert stalling_root.requests.count("imagenet-val-000001.tar") == 2


def test_a_missing_file_is_not_retried(stalling_root, capsys):
    with pytest.raises(DatasetError, match=r"nowhere/_info.json: cannot fetch: download failed \(.*404"):
        load_info(stalling_root.url + "nowhere", remote=FAST)
    assert "retry" not in capsys.readouterr().err


def test_a_transient_http_error_is_retried(stalling_root, demo_shards, capsys):
    stalling_root.unavailable["classes.txt"] = 1
    assert load_info(stalling_root.url, remote=FAST).classes == load_info(demo_shards).classes
    assert stalling_root.requests.count("classes.txt") == 2
    note = capsys.readouterr().err.strip()
    assert f"file {stalling_root.url}classes.txt: download failed (curl: (22) " in note and "503" in note
    assert note.endswith("retry 1 of 1") and len(note.splitlines()) == 1


def test_remote_options_are_checked_in_one_line():
    with pytest.raises(ValueError, match="--remote-timeout must be a finite number of seconds > 0, got 0"):
        LoaderConfig(remote_timeout=0)
    with pytest.raises(ValueError, match="--remote-retries must be >= 0, got -1"):
        LoaderConfig(remote_retries=-1)
    assert LoaderConfig().remote_options() == RemoteOptions()
