"""Read webdataset samples from a tar stream: local shard files and remote URLs.

Shards are opened with :func:`open_shard`: a local path with ``open`` (seekable, so skipped samples are
seeked over, not read); an ``http(s)://`` URL streamed by ``curl``; an ``s3://`` URL by ``aws s3 cp URL -`` (the
AWS CLI, configured as usual); a ``pipe:CMD`` (webdataset's convention) by a shell.

Remote reads are bounded by :class:`RemoteOptions` (``train --remote-timeout`` / ``--remote-retries``): a download
that gives no byte for ``timeout_s`` seconds (no answer after connecting, or a stall mid-body; a watchdog on the
pipe, so only time the reader spends waiting for bytes counts, never time it spends decoding) or that fails is
started again up to ``retries`` times, each retry named on stderr (``train: shard URL: no answer in 30 s, retry 1
of 3``; a failure that came sooner than the timeout waits 0.5 s, 1 s, 2 s ... first); after the last, one
:class:`ShardReadError` line names the URL and what to do. A retry restarts the
download from byte 0 and drops the bytes already handed to the reader, so the reader sees one unbroken byte stream:
no sample is read twice or lost, whatever member the stall fell in (the restarted download must be the same file:
one that ends sooner is an error). A failure a retry cannot mend is not retried: an HTTP 4xx other than 408 / 429,
a file, key or bucket that does not exist or may not be read (by the command's last stderr line).

:func:`iter_samples` parses the tar headers itself (POSIX ustar and GNU tar: regular files, GNU long
names, pax ``path`` records) instead of going through Python's ``tarfile``: on the sample shards it costs
about 20 µs a sample instead of about 230 µs, which is a tenth of the time of decoding one image. Members
are grouped into samples as webdataset does: the key is the name up to the first dot of its last path
component, the rest is the extension. Given the shard's sample count by ``_info.json`` (``length``), it also
checks that the shard holds exactly that many, as far as it reads (the check of remote shards, whose ``.idx``
is not fetched at start).
"""

from __future__ import annotations

import io
import math
import os
import re
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from pipeline.dataset.formats import is_url, join  # noqa: F401  (where a dataset lives: the contract's knowledge)

BLOCK = 512
READ_BUFFER = 1 << 20  # bytes buffered per open local shard


class ShardReadError(RuntimeError):
    """A shard could not be read (truncated, not a tar, member missing, a download that failed or gave no bytes
    in time); the message names it and what to do."""


@dataclass(frozen=True)
class RemoteOptions:
    """How a remote file (shard, ``_info.json``, ``classes.txt``) is downloaded.

    Attributes:
        timeout_s: seconds (> 0) a download may give no byte while the reader waits for one: before the first
            (the connect included: curl's ``--connect-timeout``) and between any two.
        retries: downloads started again (>= 0) after a timeout or a failure before the read fails.

    These defaults are ``train --remote-timeout`` / ``--remote-retries``'s (read by
    :class:`pipeline.backends.LoaderConfig`). Raises ValueError (one line) for a value out of range.
    """

    timeout_s: float = 30.0
    retries: int = 3

    def __post_init__(self) -> None:
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"--remote-timeout must be a finite number of seconds > 0, got {self.timeout_s}")
        if self.retries < 0:
            raise ValueError(f"--remote-retries must be >= 0, got {self.retries}")


# curl: fail on HTTP errors, follow redirects, pass bytes on as they arrive (--no-buffer: the watchdog sees them);
# no retries of its own and no speed limit (RemoteOptions' watchdog and retries bound every wait: curl's
# --speed-time would also count the time a slow reader keeps the pipe full).
CURL = ("curl", "--fail", "--silent", "--show-error", "--location", "--no-buffer")
_HTTP_STATUS = re.compile(r"(?:returned error:? |error occurred \()(\d{3})\b")  # curl's / the AWS CLI's wording
_RETRIED_4XX = (408, 429)  # request timeout, too many requests: worth another try
_ABSENT = re.compile(r"not found|does not exist|no such file|NoSuch[A-Z]\w*|AccessDenied", re.IGNORECASE)
_CURL_TIMEOUT = 28  # curl's exit status for a connect (or transfer) timeout


def _program() -> str:
    """The command's name for notes on stderr (``train``, ``io-bench``; ``train`` for ``tools/train.py``)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return name[:-3] if name.endswith(".py") else name


class _CommandStream(io.RawIOBase):
    """stdout of a download command as a binary stream, under :class:`RemoteOptions`' watchdog and retries (see
    the module docstring).

    Raises (on ``readinto``):
        ShardReadError: the download gave no byte in ``timeout_s`` or failed, ``retries`` times over (or once, for
            an error a retry cannot mend): one line naming the location, why, and what to do.
    """

    def __init__(self, argv: list[str] | str, location: str, remote: RemoteOptions, shell: bool = False):
        super().__init__()
        self.location = location
        self.remote = remote
        self._argv, self._shell = argv, shell
        self._delivered = 0  # bytes handed to the reader, over every attempt
        self._retry = 0  # retries started so far
        self.proc: subprocess.Popen | None = None
        self._start()

    def _start(self) -> None:
        self.errors = tempfile.TemporaryFile()
        try:  # bufsize=0: an unbuffered pipe, so the watchdog's select() sees every byte not yet read
            self.proc = subprocess.Popen(self._argv, stdout=subprocess.PIPE, stderr=self.errors, shell=self._shell,
                                         bufsize=0)
        except OSError as exc:
            self.errors.close()
            cmd = self._argv if self._shell else self._argv[0]
            raise ShardReadError(f"{self.location}: cannot start `{cmd}` ({exc.strerror}); install it or use a local "
                                 f"copy of the shards") from None
        self._started = time.monotonic()
        self._got = 0  # bytes of this attempt
        self._drop = self._delivered  # a retry: bytes the reader already has, read again and dropped

    def readable(self) -> bool:
        return True

    eof = False

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        while True:
            why, retry = self._wait()
            if why is None:
                n = self.proc.stdout.readinto(view)
                if n:
                    self._got += n
                    if self._drop:
                        dropped = min(n, self._drop)
                        self._drop -= dropped
                        if dropped == n:
                            continue
                        view[:n - dropped] = bytes(view[dropped:n])
                        n -= dropped
                    self._delivered += n
                    return n
                why, retry = self._ended()
                if why is None:
                    self.eof = True
                    return 0
            self._again(why, retry)

    def _wait(self) -> tuple[str | None, bool]:
        """(None, _) once the pipe has a byte or its end; else (why, True) after ``timeout_s`` without one."""
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], self.remote.timeout_s)
        if ready:
            return None, True
        t = f"{self.remote.timeout_s:g} s"
        if self._got == 0:
            return f"no answer in {t}", True
        return f"no data for {t} after {self._got} bytes", True

    def _ended(self) -> tuple[str | None, bool]:
        """At the end of the pipe: (None, _) for a complete download, else (why, whether a retry can help)."""
        try:
            rc = self.proc.wait(self.remote.timeout_s)
        except subprocess.TimeoutExpired:  # its output closed, the command still running: a stall too
            return f"the command did not end in {self.remote.timeout_s:g} s after its output", True
        if rc == 0:
            if self._drop:
                return (f"the download ended after {self._got} bytes on retry, {self._delivered} were read before "
                        f"(the file changed on the server?)"), False
            return None, True
        lines = self._stderr_lines()
        last = lines[-1] if lines else f"exit status {rc}"
        if rc == _CURL_TIMEOUT and self._got == 0 and self.location.startswith(("http://", "https://")):
            return f"no answer in {self.remote.timeout_s:g} s ({last})", True
        return f"download failed ({last})", not _permanent(last)

    def _stderr_lines(self) -> list[str]:
        self.errors.seek(0)
        return [ln for ln in self.errors.read().decode("utf-8", "replace").splitlines() if ln.strip()]

    def _stop(self) -> None:
        """End this attempt's command (if running) and release its pipe and stderr file."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.stdout.close()
        self.proc.wait()
        self.errors.close()

    def _again(self, why: str, retry: bool) -> None:
        """Start the next attempt, with a note on stderr; ShardReadError when none is left (or ``retry`` is False)."""
        self._stop()
        total = self.remote.retries
        if not retry or self._retry >= total:
            if not retry:
                raise ShardReadError(f"{self.location}: {why}; check the URL (it must hold the files shard-imagenet "
                                     f"wrote)")
            tries = f" (the first try and {total} retr{'y' if total == 1 else 'ies'})" if total else ""
            raise ShardReadError(f"{self.location}: {why}{tries}; check that the server is up and serves the shard "
                                 f"folder, or raise --remote-timeout / --remote-retries")
        self._retry += 1
        what = "shard" if self.location.endswith(".tar") else "file"
        sys.stderr.write(f"{_program()}: {what} {self.location}: {why}, retry {self._retry} of {total}\n")
        sys.stderr.flush()
        waited = time.monotonic() - self._started
        if waited < self.remote.timeout_s:  # a fast failure (refused, 5xx): give the server a moment (0.5, 1, 2 s ...)
            time.sleep(min(0.5 * 2 ** (self._retry - 1), self.remote.timeout_s - waited))
        self._start()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._stop()  # the reader stopped early (its segment ended) or it is done: no error either way
        finally:
            self.proc = None
            super().close()


def _permanent(error: str) -> bool:
    """True when a download command's last stderr line says a retry cannot help: an HTTP 4xx other than 408 / 429
    (curl, the AWS CLI), or a file, key or bucket that does not exist or may not be read."""
    status = _HTTP_STATUS.search(error)
    if status is not None:
        code = int(status.group(1))
        return 400 <= code < 500 and code not in _RETRIED_4XX
    return _ABSENT.search(error) is not None


def _download_command(location: str, remote: RemoteOptions) -> tuple[list[str] | str, bool]:
    """(the command that writes ``location``'s bytes to stdout, whether it is a shell line)."""
    if location.startswith(("http://", "https://")):
        return [*CURL, "--connect-timeout", f"{remote.timeout_s:g}", location], False
    if location.startswith("s3://"):
        return ["aws", "s3", "cp", "--quiet", location, "-"], False
    return location[len("pipe:"):], True


def open_shard(location: str, remote: RemoteOptions | None = None) -> BinaryIO:
    """Open a shard (or any file of a dataset folder) for reading as a binary stream.

    http(s) is streamed with ``curl`` (see ``CURL``), ``s3://`` with ``aws s3 cp URL -``, ``pipe:CMD`` runs CMD
    in a shell, each under ``remote``'s timeout and retries (None: :class:`RemoteOptions`' defaults); a local
    path is opened directly.

    Raises:
        ShardReadError: a local file is missing or unreadable; a download command cannot start (on read: it gave
            no byte in time or failed, after the retries).
    """
    if is_url(location):
        remote = RemoteOptions() if remote is None else remote
        argv, shell = _download_command(location, remote)
        return io.BufferedReader(_CommandStream(argv, location, remote, shell=shell), READ_BUFFER)
    try:
        return open(location, "rb", buffering=READ_BUFFER)
    except OSError as exc:
        raise ShardReadError(f"{location}: cannot open ({exc.strerror}); check the path or re-run shard-imagenet") \
            from None


def read_location(location: str, remote: RemoteOptions | None = None) -> bytes:
    """Whole content of a small file (``_info.json``, ``classes.txt``) at a path or URL (``remote``: as for
    :func:`open_shard`).

    Raises:
        ShardReadError: it cannot be read (for URLs: the download gave no byte in time or failed, after the
            retries).
    """
    try:
        with open_shard(location, remote) as f:
            return f.read()
    except OSError as exc:
        raise ShardReadError(f"{location}: cannot read ({exc})") from None


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    field = field.split(b"\0", 1)[0].strip()
    return int(field, 8) if field else 0


def _read_exact(f: BinaryIO, n: int, url: str) -> bytes:
    data = f.read(n)
    if len(data) == n:
        return data
    chunks = [data]
    got = len(data)
    while got < n:  # pipes may return short reads
        more = f.read(n - got)
        if not more:
            raise ShardReadError(f"{url}: truncated (ends inside a tar member); run `shard-imagenet verify` "
                                 f"on its folder, then re-shard")
        chunks.append(more)
        got += len(more)
    return b"".join(chunks)


def _skip(f: BinaryIO, n: int, url: str, seekable: bool) -> None:
    if seekable:
        f.seek(n, io.SEEK_CUR)
    else:
        _read_exact(f, n, url)


def _headers(f: BinaryIO, url: str, seekable: bool) -> Iterator[tuple[str, int]]:
    """Yield ``(name, size)`` of every regular file in the tar; the consumer reads or skips its ``size`` data
    bytes (:func:`_data`, :func:`_skip_data`) before asking for the next one."""
    long_name = None
    while True:
        header = f.read(BLOCK)
        if len(header) < BLOCK:
            if not header:
                return  # no end-of-archive blocks: tolerated, as tarfile does
            raise ShardReadError(f"{url}: truncated (ends inside a tar header); run `shard-imagenet verify` on its "
                                 f"folder, then re-shard")
        if header == _ZERO_BLOCK:
            return  # end-of-archive marker
        try:
            checksum = _octal(header[148:156])
            size = _octal(header[124:136])
        except ValueError:
            checksum, size = -1, 0
        if checksum != sum(header[:148]) + 256 + sum(header[156:]):  # checksum field counted as 8 spaces
            raise ShardReadError(f"{url}: not a tar file or corrupt header; run `shard-imagenet verify` on its "
                                 f"folder, then re-shard")
        kind = header[156:157]
        if kind in (b"L", b"x"):  # GNU long name / pax extended header: applies to the next member
            data = _data(f, size, url, seekable)
            if kind == b"L":
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            else:
                for record in data.split(b"\n"):
                    k, _, v = record.partition(b" ")[2].partition(b"=")
                    if k == b"path":
                        long_name = v.decode("utf-8", "surrogateescape")
            continue
        if long_name is not None:
            name, long_name = long_name, None
        else:
            raw = header[:100].split(b"\0", 1)[0]
            if header[257:262] == b"ustar" and header[345]:
                raw = header[345:500].split(b"\0", 1)[0] + b"/" + raw
            name = raw.decode("utf-8", "surrogateescape")
        if kind in (b"0", b"\0", b"7"):
            yield name, size
        else:  # directories, links, global headers: no sample data
            _skip_data(f, size, url, seekable)


_ZERO_BLOCK = bytes(BLOCK)


def _data(f: BinaryIO, size: int, url: str, seekable: bool) -> bytes:
    """Read a member's ``size`` bytes and step over its padding to the next 512-byte block."""
    data = _read_exact(f, size, url)
    pad = -size % BLOCK
    if pad:
        _skip(f, pad, url, seekable)
    return data


def _skip_data(f: BinaryIO, size: int, url: str, seekable: bool) -> None:
    _skip(f, size + (-size % BLOCK), url, seekable)


def split_name(name: str) -> tuple[str, str]:
    """Member name → ``(key, extension)`` as webdataset splits it (first dot of the last path component)."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]


def iter_samples(location: str, skip: int = 0, take: int | None = None, remote: RemoteOptions | None = None,
                 length: int | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {extension: bytes})`` for samples ``skip .. skip + take`` of the shard at ``location``.

    Samples before ``skip`` are seeked over (local files) or read and dropped (streams). ``remote``: the timeout
    and retries of a URL (:func:`open_shard`). ``length``: the shard's sample count by ``_info.json``, checked as
    far as this read goes: the shard must not end before it, and must not hold another sample after it when the
    read reaches it (one more header read).

    Raises:
        ShardReadError: the shard cannot be opened, is truncated, a header is corrupt, a download gave no byte in
            time or failed (after the retries), or the shard holds another count than ``length`` (names the shard).
    """
    stop = None if take is None else skip + take
    index, key, current, keep = -1, None, {}, False
    try:
        with open_shard(location, remote) as f:
            seekable = f.seekable() if hasattr(f, "seekable") else False
            for name, size in _headers(f, location, seekable):
                k, ext = split_name(name)
                if k != key:
                    if keep:
                        yield key, current
                    index, key, current = index + 1, k, {}
                    if length is not None and index >= length:
                        raise _count_error(location, f"more than {length}", length)
                    if stop is not None and index >= stop:
                        return
                    keep = index >= skip
                if keep:
                    current[ext] = _data(f, size, location, seekable)
                else:
                    _skip_data(f, size, location, seekable)
            if keep:
                yield key, current
    except OSError as exc:  # I/O errors of the file or of the download pipe
        raise ShardReadError(f"{location}: unreadable ({exc}); check the path or URL") from None
    if length is not None and index + 1 != length:
        raise _count_error(location, str(index + 1), length)


def _count_error(location: str, held: str, length: int) -> ShardReadError:
    return ShardReadError(f"{location}: holds {held} samples, _info.json says {length} (edited, or the shard "
                          f"replaced?); run `shard-imagenet verify` on its folder, then re-shard")


def count_samples(location: str, remote: RemoteOptions | None = None) -> int:
    """Samples in the shard at ``location``, counted from its tar headers (a local file: one 512-byte read per
    member, the data seeked over; a URL: the whole download).

    Raises:
        ShardReadError: as :func:`iter_samples`.
    """
    count, key = 0, None
    try:
        with open_shard(location, remote) as f:
            seekable = f.seekable() if hasattr(f, "seekable") else False
            for name, size in _headers(f, location, seekable):
                k = split_name(name)[0]
                if k != key:
                    count, key = count + 1, k
                _skip_data(f, size, location, seekable)
    except OSError as exc:
        raise ShardReadError(f"{location}: unreadable ({exc}); check the path or URL") from None
    return count
