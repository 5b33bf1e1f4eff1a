"""Stopping on a signal without losing work.

SIGTERM, SIGINT and SIGUSR1 (SLURM's warning before its time limit) ask for save-and-exit at the
end of the step, decided by every rank together (``stop_reasons``). A step's data gets a grace
period after such a signal; a reader that never yields is given up (``DataWaitInterrupted``),
so it cannot keep SLURM from stopping the job. A stop exits with 128 + the signal's number.
"""

from __future__ import annotations

import signal

import torch

from megatron_infimed.runtime import distributed


class StoppedBySignal(Exception):
    """The run stopped early on a signal (after saving, if it could); ``exit_code`` is 128 + the
    signal's number, as a shell reports a signal, so a requeue script can tell it from success."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class DataWaitInterrupted(Exception):
    """A stop signal arrived while the loop was waiting for the next step's data."""


class StopRequest:
    """SIGTERM, SIGINT and SIGUSR1 (SLURM's warning before the time limit) ask for save-and-exit at
    the end of the step; a second SIGINT aborts at once. A step whose data has not come
    ``grace_seconds`` after such a signal is given up (``DataWaitInterrupted``, via SIGALRM): a
    reader that never yields cannot keep SLURM from stopping the job, while a merely slow one
    still delivers its step, which is then saved."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self, grace_seconds: float = 10.0):
        self.signum: int | None = None
        self.grace_seconds = grace_seconds
        self.waiting_for_data = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (*self.SIGNALS, signal.SIGALRM)}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if signum == signal.SIGALRM:
            if self.waiting_for_data:
                raise DataWaitInterrupted()
            return
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt("second SIGINT: aborting without saving")
        self.signum = self.signum or signum
        if self.waiting_for_data:
            self._arm()

    def _arm(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, self.grace_seconds)

    def wait_for_data(self):
        """Context for the wait: a signal before or during it gives the data ``grace_seconds``."""
        return _DataWait(self)

    def restore(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _DataWait:
    def __init__(self, stop: StopRequest):
        self.stop = stop

    def __enter__(self):
        self.stop.waiting_for_data = True
        if self.stop.requested:  # the signal came during the last step's compute
            self.stop._arm()

    def __exit__(self, *exc):
        self.stop.waiting_for_data = False
        signal.setitimer(signal.ITIMER_REAL, 0)


def next_step(feed, stop: StopRequest, iteration: int):
    """The step's packs. Data that arrives within the grace period after a stop signal is trained
    and saved at the end of the step, by every rank together. Data that does not ends the run here,
    unsaved: the loader has moved into a step that will not run, and other ranks may be inside the
    step's collectives."""
    try:
        with stop.wait_for_data():
            return feed.next_step()
    except DataWaitInterrupted:
        name = signal.Signals(stop.signum).name
        raise StoppedBySignal(stop.signum, f"stopped by {name}: the data of iteration {iteration + 1} did not "
                                           f"come within {stop.grace_seconds:g} s; not saved, the last "
                                           f"checkpoint stands") from None


def stop_reasons(stop: StopRequest, timed_out: bool) -> tuple[int | None, bool]:
    """(a signal any rank received, whether any rank ran out of time): one collective, so that every
    rank saves and stops together."""
    value = torch.tensor([stop.signum or 0, int(timed_out)], device=distributed.device())
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    signum, timed_out = value.tolist()
    return (int(signum) or None), bool(timed_out)
