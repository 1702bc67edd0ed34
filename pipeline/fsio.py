"""Writing outputs safely: an inter-process lock on a folder, and atomic file writes (used by ``train`` and
``shard-imagenet``).

:class:`FolderLock` takes ``<folder>/.lock`` (or another name) with ``fcntl.flock``: the kernel releases it when
its process ends, however it ends (``kill -9`` too), so a lock file left by a dead run is never in the way. The
holder writes its pid, host, start time and command into the file, which the refused run names in its one line
(:class:`FolderBusy`). Where ``fcntl`` does not exist (Windows) the lock is the file's exclusive creation; a file
left by a process that no longer runs on this host is taken over, one from another host is reported as busy.

:func:`atomic_write` writes a temporary file in the same folder, flushes and fsyncs it, then ``os.replace``-s it
onto the final name: the final name holds either its previous complete content or the new complete content,
never a partial file; a failed write (disk full, quota, read-only) is one :class:`WriteFailed` line naming the
path, and the previous file is intact.

:func:`drop_cache` is the one ``posix_fadvise(DONTNEED)`` wrapper: the sharder starts the write-back of a shard
with it, io-bench drops shards from the page cache before a cold read.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, IO

try:
    import fcntl
except ImportError:  # Windows: exclusive creation of the lock file instead
    fcntl = None

LOCK_NAME = ".lock"
TMP_SUFFIX = ".tmp"


class FolderBusy(ValueError):
    """Another live process holds the folder's lock; the message (one line) names it and what to do."""


class WriteFailed(ValueError):
    """A file could not be written (disk full, quota, read-only, ...); the message (one line) names the path, why,
    and that its previous content is intact."""


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock, as written in its lock file (None: not recorded or unreadable)."""

    pid: int | None = None
    host: str | None = None
    since: str | None = None
    command: str | None = None

    def describe(self) -> str:
        """``pid 123 on host h since 2026-12-07 03:00:00 UTC`` (the parts that are known)."""
        parts = [f"pid {self.pid}" if self.pid is not None else "pid unknown"]
        if self.host:
            parts.append(f"on host {self.host}")
        if self.since:
            parts.append(f"since {self.since}")
        return " ".join(parts)


def read_owner(path: Path) -> LockOwner:
    """The owner recorded in lock file ``path`` (fields None where the file is missing, empty or not ours)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return LockOwner()
    if not isinstance(data, dict):
        return LockOwner()
    pid = data.get("pid")
    return LockOwner(pid if isinstance(pid, int) else None, data.get("host"), data.get("since"), data.get("command"))


def _owner_text() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime()),
                       "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])}) + "\n"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


class FolderLock:
    """An inter-process lock on ``folder`` (made where missing), held from :meth:`acquire` to :meth:`release` (or
    the end of the process). A context manager.

    Args:
        folder: the folder to lock.
        flag: how the user named it (``--checkpoint-dir``, ``--out``): the refusal's message starts with it.
        name: the lock file's name inside ``folder``.
        shared: a shared lock (``fcntl`` only): any number of shared holders together, none with an exclusive one
            (``shard-imagenet``'s jobs of one ``--num-jobs`` split share their ``--out``; without ``fcntl`` a
            shared lock is not taken). The lock file is removed on release by an exclusive holder, and by the last
            shared one.
        advice: what the refused run is told to do.

    Raises (from :meth:`acquire`):
        FolderBusy: another live process holds it.
        WriteFailed: the folder or its lock file cannot be made.
    """

    def __init__(self, folder: Path, flag: str, name: str = LOCK_NAME, shared: bool = False,
                 advice: str = "wait for it or pick another folder"):
        self.folder, self.flag, self.shared, self.advice = Path(folder), flag, shared, advice
        self.path = self.folder / name
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


    def _busy(self, owner: LockOwner | None = None) -> FolderBusy:
        owner = owner or read_owner(self.path)
        here = owner.host == socket.gethostname()
        known = owner.pid is not None and not (here and (owner.pid == os.getpid() or not _pid_alive(owner.pid)))
        who = f": {owner.describe()}" if known else ""  # a shared lock's file may name a holder that has left
        return FolderBusy(f"{self.flag} {self.folder} is used by another run{who}; {self.advice}")

    def acquire(self) -> FolderLock:
        if self._fd is not None:
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if fcntl is not None:
                self._acquire_flock()
            elif not self.shared:  # no shared creation of a file: shared holders go without a lock there
                self._acquire_exclusive_file()
        except OSError as exc:
            raise WriteFailed(f"{self.flag} {self.folder}: cannot write its lock file {self.path} "
                              f"({exc.strerror or exc}); pick a writable folder") from exc
        return self

    def _acquire_flock(self) -> None:
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        for _ in range(100):  # retried only when the file was replaced while we locked it
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._busy() from None
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:  # its holder removed it as we locked it: lock the new one
                same = False
            if not same:
                os.close(fd)
                continue
            self._fd = fd
            os.ftruncate(fd, 0)  # shared holders: the last one to start is the one named
            os.write(fd, _owner_text().encode("utf-8"))
            return
        raise OSError(errno.EAGAIN, "the lock file keeps being replaced")

    def _acquire_exclusive_file(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = read_owner(self.path)
                stale = (owner.pid is not None and owner.host == socket.gethostname() and not _pid_alive(owner.pid))
                if not stale:
                    raise self._busy(owner) from None
                self.path.unlink()  # its process is gone: take it over
                continue
            os.write(fd, _owner_text().encode("utf-8"))
            self._fd = fd
            return
        raise self._busy()

    def release(self) -> None:
        """Give the lock up (nothing when not held); an exclusive lock's file is removed first."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if not self.shared:
            try:
                self.path.unlink()  # while still locked: a process waiting on this file sees it replaced
            except OSError:
                pass
        elif fcntl is not None:
            try:  # the last shared holder out removes the file (a process that opened it meanwhile sees it replaced)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.path.unlink()
            except OSError:
                pass
        os.close(fd)


def _why(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename in it) to disk, where the platform allows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], what: str = "") -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a binary temporary file in the same folder (folder made),
    which is fsync'd and renamed onto ``path``. Returns ``path``.

    ``what``: how the message names the file (e.g. ``the metrics JSON``).

    Raises:
        WriteFailed: an ``OSError`` while writing (disk full, quota, read-only, ...), or a ``RuntimeError`` /
            ``ValueError`` of a writer that wraps one (torch, matplotlib); one line naming ``path``; the previous
            ``path`` (if any) is untouched and no temporary file is left.
    """
    path = Path(path)
    if path.is_symlink():  # the file the link names is replaced, the link stays
        path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file():  # a device (/dev/null, /dev/full), pipe or folder: never replaced
        return _write_in_place(path, write, what)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError, ValueError) as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        kept = "its previous content is intact" if path.exists() else "nothing was written"
        raise WriteFailed(f"cannot write {what + ' ' if what else ''}{path} ({_why(exc)}): free space there or pick "
                          f"another path; {kept}") from None
    fsync_dir(path.parent)
    return path


def _write_in_place(path: Path, write: Callable[[IO[bytes]], None], what: str) -> Path:
    """``write(f)`` into ``path`` itself: a device or pipe, where a rename would replace the special file by a
    regular one (as root, ``/dev/full`` would stop being the device).

    Raises:
        WriteFailed: as :func:`atomic_write` (a folder: "Is a directory").
    """
    try:
        with open(path, "wb") as f:
            write(f)
            f.flush()
    except (OSError, RuntimeError, ValueError) as exc:
        raise WriteFailed(f"cannot write {what + ' ' if what else ''}{path} ({_why(exc)}): pick another "
                          f"path") from None
    return path


def atomic_write_bytes(path: Path, data: bytes, what: str = "") -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda f: f.write(data), what)


def atomic_write_text(path: Path, text: str, what: str = "") -> Path:
    """:func:`atomic_write` of ``text`` as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"), what)


def drop_cache(fd: int, offset: int = 0, length: int = 0, sync: bool = False) -> str | None:
    """Tell the kernel that ``length`` bytes (0: to the end of the file) of the open file ``fd`` from ``offset``
    are not needed in the page cache (``posix_fadvise(POSIX_FADV_DONTNEED)``): on Linux clean pages are dropped and
    the write-back of dirty ones is started, without waiting for it. With ``sync`` the file's data is written
    back first (``fdatasync``; its error ignored), so that its dirty pages are dropped too. A hint, never raises.

    Returns:
        None on success, else why the cache could not be dropped (one phrase: ``posix_fadvise`` missing on this
        platform, or the call's error).
    """
    if not hasattr(os, "posix_fadvise"):
        return "os.posix_fadvise is not available on this platform"
    if sync:
        try:
            os.fdatasync(fd)  # dirty pages (a freshly written shard) are not dropped until written back
        except OSError:
            pass
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except OSError as exc:
        return f"posix_fadvise failed ({exc.strerror})"
    return None
