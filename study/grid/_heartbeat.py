"""Heartbeats for a trial run outside ``study.optimize``, where Optuna would record them itself."""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType

from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat

_logger = logging.getLogger(__name__)


class _Heartbeat(AbstractContextManager["_Heartbeat"]):
    def __init__(self, storage: BaseHeartbeat, trial_id: int, interval_s: float) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"heartbeat-{trial_id}", daemon=True
        )

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception as error:
                # A database outage must not end the trial: a missed beat only brings the grace
                # period closer, and the next beat may get through.
                _logger.warning("heartbeat of trial id %d failed: %s", self._trial_id, error)


def heartbeat(storage: BaseStorage, trial_id: int) -> AbstractContextManager[object]:
    """Record the trial's heartbeat every interval while the block runs (no-op without one).

    The caller records the first beat before claiming the trial, so none is recorded on entry.
    """
    interval = storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None
    if interval is None:
        return nullcontext()
    assert isinstance(storage, BaseHeartbeat)
    return _Heartbeat(storage, trial_id, float(interval))
