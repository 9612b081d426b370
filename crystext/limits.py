"""Bounded work per record: a size limit and a wall-clock limit for one structure's conversion.

One pathological record (a 64,000-atom supercell, a structure that sends the symmetry search
into a corner) must never stall a batch job. Batch jobs catch :class:`RecordTimeoutError` /
:class:`StructureTooLargeError`, count the record under its reason and go on; single calls
raise them with the input named.

``time_limit`` uses ``SIGALRM`` (``setitimer``), so it interrupts Python code in the main thread
of a process (the CLI, each worker of a process pool). Inside a long C call (spglib) the alarm is
delivered when the call returns, which is why the size limit is checked first. Elsewhere (other
threads, Windows) it does nothing and says so in :func:`time_limit_supported`.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from .errors import RecordTimeoutError, StructureTooLargeError

#: Default atom limit per input cell for text conversion. The largest Materials Project cells
#: hold a few hundred atoms; a canonical text of more than this would not fit a 1,024-token
#: context anyway.
DEFAULT_MAX_ATOMS = 1000
#: Default wall-clock limit (seconds) for converting one structure.
DEFAULT_TIME_LIMIT = 60.0


def time_limit_supported() -> bool:
    """True where :func:`time_limit` can interrupt work (POSIX, main thread)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def time_limit(seconds: float | None, what: str = "record", hint: str = "") -> Iterator[None]:
    """Raise :class:`RecordTimeoutError` naming ``what`` if the block runs longer than ``seconds``.

    ``None`` or ``0`` means no limit. Nested limits keep the tighter one and restore the outer
    timer afterwards. ``hint`` is appended to the message (how to raise the limit).
    """
    if not seconds or seconds <= 0 or not time_limit_supported():
        yield
        return

    def _expired(signum, frame):  # noqa: ARG001
        raise RecordTimeoutError(
            f"{what}: gave up after {seconds:g} s (per-record time limit){'; ' + hint if hint else ''}"
        )

    outer_remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    if outer_remaining and outer_remaining < seconds:  # the outer limit is tighter: let it fire
        yield
        return
    old_handler = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        left, _ = signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if outer_remaining:  # give the outer limit back what is left of it
            used = float(seconds) - left
            signal.setitimer(signal.ITIMER_REAL, max(outer_remaining - used, 1e-3))


def check_size(n_atoms: int, max_atoms: int | None, what: str = "structure", hint: str = "") -> None:
    """Raise :class:`StructureTooLargeError` if ``n_atoms`` exceeds ``max_atoms`` (None: no limit)."""
    if max_atoms is not None and max_atoms > 0 and n_atoms > max_atoms:
        raise StructureTooLargeError(
            f"{what}: {n_atoms} atoms is over the limit of {max_atoms}{'; ' + hint if hint else ''}"
        )
