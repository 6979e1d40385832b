"""Independent runs in worker processes: ``reproduce --jobs N``.

Each job is one (row, seed) run of a reproduce — its own run folder, claimed by
the trainer, the evaluation and the audit in turn — so jobs share no file and
can run side by side. Workers are started with ``spawn`` (a fresh interpreter:
forking a process whose OpenMP pool has run can hang the child) and each uses
``max(1, cores // N)`` torch threads, so N workers do not oversubscribe the
machine.

Stopping: workers run in a process group of their own, so a Ctrl-C at the
terminal reaches the parent only; the parent then sends each worker one
SIGINT, on which a training run stops at the end of its step with a checkpoint
(robustode.signals; a second signal would stop it at once, without one), and
waits for them. On Linux a worker is also sent SIGTERM when the parent dies,
even by SIGKILL, so no orphan keeps a run folder locked. Either way a restarted
reproduce continues where the stopped one was. A job's exception comes back to
the parent as it was raised when it can be pickled, else as one of the same kind
(a stop, an error a user can fix, or a bug) carrying its message.
"""

from __future__ import annotations

import contextlib
import copy
import io
import multiprocessing
import os
import pickle
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, TextIO, TypeVar

import torch

from ..errors import RobustodeError

Job = TypeVar("Job")
Outcome = TypeVar("Outcome")


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Torch threads of each of ``jobs`` workers: the cores shared out, at least one."""
    return max(1, (cores if cores is not None else cpu_cores()) // max(1, jobs))


def _die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


_PARENT: int | None = None  # the pid of the process that started this worker


def _init_worker(threads: int) -> None:
    global _PARENT
    _PARENT = os.getppid()
    _die_with_parent()
    # out of the terminal's process group: a Ctrl-C reaches the parent, which sends each
    # worker exactly one SIGINT (two would stop a training run without its checkpoint)
    os.setpgrp()
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


class JobInterrupted(KeyboardInterrupt):
    """A job stopped by a signal (its message says where it stopped)."""


class JobError(RobustodeError):
    """A job's error that a user can cause and fix, with its message."""


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (the way back to the parent), else an exception of the
    same kind with its message: an exception whose ``__init__`` takes other arguments than
    its message (``TrainingStopped``) would fail to unpickle in the parent and break the
    pool instead of being raised there."""
    try:
        # serialisable, and rebuildable from its reduce tuple as the parent's unpickling
        # would (deepcopy takes the same __reduce_ex__ path; no unpickling in this codebase)
        pickle.dumps(exc)
        copy.deepcopy(exc)
        return exc
    except Exception:  # any failure to round-trip: send a copy
        text = f"{exc}" or type(exc).__name__
        if isinstance(exc, KeyboardInterrupt):
            return JobInterrupted(text)
        if isinstance(exc, RobustodeError):
            return JobError(text)
        return RuntimeError(f"{type(exc).__name__}: {text}")


def _call(fn: Callable[[Job], Outcome], job: Job) -> Outcome:
    """``fn(job)`` in a worker, its exception made portable (:func:`_portable`)."""
    try:
        return fn(job)
    except BaseException as exc:  # every exception must reach the parent
        raise _portable(exc) from None
    finally:
        # the parent died during the job (the signal it left stopped the job): nobody will
        # send this worker another job or its stop, so it must not wait for one
        if _PARENT is not None and os.getppid() != _PARENT:
            os._exit(1)


def run_jobs(
    fn: Callable[[Job], Outcome],
    jobs: Sequence[Job],
    n_jobs: int,
    on_done: Callable[[int, Outcome], None] | None = None,
) -> list[Outcome]:
    """``[fn(job) for job in jobs]``, in ``n_jobs`` worker processes when ``n_jobs`` > 1 (in
    this process otherwise); ``on_done(i, outcome)`` as each job ends, in the order they end.
    ``fn`` must be a module-level function and jobs picklable. The first job that raises
    stops the rest: those not started are cancelled, those running are finished."""
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be ≥ 1, got {n_jobs}")
    outcomes: dict[int, Outcome] = {}
    if n_jobs == 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            outcomes[i] = fn(job)
            if on_done is not None:
                on_done(i, outcomes[i])
        return [outcomes[i] for i in range(len(jobs))]
    workers = min(n_jobs, len(jobs))
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads_per_job(n_jobs),),
    )
    try:
        pending = {pool.submit(_call, fn, job): i for i, job in enumerate(jobs)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in _in_order(done, pending):
                i = pending.pop(future)
                outcomes[i] = future.result()  # a job's exception is raised here
                if on_done is not None:
                    on_done(i, outcomes[i])
    except KeyboardInterrupt:
        # the workers are in their own process group: stop each once, let the runs in
        # progress write their checkpoints, start no other
        for process in list(getattr(pool, "_processes", {}).values()):
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGINT)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [outcomes[i] for i in range(len(jobs))]


class _Prefixed(io.TextIOBase):
    """A text stream that writes each complete line to ``target`` behind ``prefix``: the
    lines of runs side by side in one terminal say which run they are from."""

    def __init__(self, target: TextIO, prefix: str) -> None:
        self.target, self.prefix, self._pending = target, prefix, ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:  # a progress bar would be torn apart by the prefixes
        return False

    def write(self, text: str) -> int:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            self.target.write(f"{self.prefix}{line}\n")
        self.target.flush()
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self.target.write(f"{self.prefix}{self._pending}\n")
            self._pending = ""
        self.target.flush()


@contextlib.contextmanager
def prefixed_stderr(prefix: str) -> Iterator[TextIO]:
    """Within the block, ``sys.stderr`` prefixes every line with ``prefix``; yields the
    stream it replaced."""
    original = sys.stderr
    stream = _Prefixed(original, prefix)
    sys.stderr = stream
    try:
        yield original
    finally:
        stream.flush()
        sys.stderr = original


def _in_order(done: Iterable[Any], index: dict[Any, int]) -> list[Any]:
    return sorted(done, key=lambda future: index[future])


__all__ = [
    "JobError",
    "JobInterrupted",
    "cpu_cores",
    "prefixed_stderr",
    "run_jobs",
    "threads_per_job",
]
