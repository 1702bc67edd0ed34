"""Lifetime: worker processes that end with the process that started them. One job: a ``kill -9`` of the sharder
(or of ``shard-imagenet verify``), which leaves it no time to stop its pool, must not leave its workers running.

:func:`die_with_parent` is called first thing in each worker (the pools' initializer): on Linux the kernel then
sends the worker SIGKILL when its parent ends (``prctl(PR_SET_PDEATHSIG)``); everywhere a watchdog thread
ends the worker once its parent pid is gone. A shard a killed worker was writing stays a ``.tmp`` file, which
the next run removes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): the signal the kernel sends when the parent ends
_WATCHDOG_S = 1.0  # how often a worker checks that its parent is still there


def die_with_parent(parent: int) -> None:
    """Make this process end when its parent, ``parent`` (its pid, taken in the parent before the fork), ends
    in any way; it exits at once if the parent is already gone."""
    if sys.platform.startswith("linux"):
        try:
            ulong = ctypes.c_ulong  # prctl is variadic: pass full-width arguments
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, ulong(signal.SIGKILL), ulong(0), ulong(0),
                                                    ulong(0))
        except (OSError, AttributeError):  # no prctl in this libc: the watchdog alone
            pass
    if os.getppid() != parent:  # the parent ended before the death signal was set
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watchdog", daemon=True).start()


def _watch_parent(parent: int) -> None:
    """Exit this process as soon as its parent is no longer ``parent`` (it was re-parented: the parent ended)."""
    while os.getppid() == parent:
        time.sleep(_WATCHDOG_S)
    os._exit(1)
