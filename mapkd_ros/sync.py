"""Approximate-time synchronisation of the six cameras, with a "latest slot" for the inference worker.

``message_filters`` cannot be installed from PyPI, so this is our own, small and ROS-free (stamps are integer
nanoseconds, payloads are opaque). The policy:

* each camera has a bounded queue (``queue_size`` newest messages); a message whose stamp is not newer than the
  camera's previous one is rejected (``'backwards'`` / ``'duplicate'``), except that a jump back of more than
  ``reset_after`` seconds is taken as a clock reset (a bag played again in a loop): that camera's queue restarts;
* a **set** is one message per camera whose stamps all lie within ``slop`` seconds. After every accepted message
  the newest complete set is searched; when found, it goes to the **latest slot** and every message up to it is
  removed from the queues (older messages can only make older sets);
* the slot holds ONE set. When the worker is still busy with the previous set and a newer set completes, the set
  waiting in the slot is replaced and counted in ``dropped``: the worker always takes the newest complete set, and
  nothing queues without bound.

``KeyedThrottle`` (rate limiting of warnings per key, e.g. per camera) and the age of each camera's last message
(``ages()``, for the node's silence warnings and diagnostics) live here too: they are plain timing logic that the
node uses and the tests exercise without ROS.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from mapkd_core.errors import ConfigError

NS = 1_000_000_000


@dataclass
class SyncedSet:
    """One synchronised set: a message per camera. ``stamp_ns`` is the newest stamp of the set (the moment the set
    was complete); ``payloads`` / ``stamps_ns`` follow the synchroniser's camera order."""

    stamp_ns: int
    stamps_ns: dict[str, int]
    payloads: dict[str, Any]
    seq: int = 0  # 1, 2, ... in the order sets completed
    completed_at: float = field(default_factory=time.monotonic)

    @property
    def spread_ns(self) -> int:
        return max(self.stamps_ns.values()) - min(self.stamps_ns.values())


class ApproximateTimeSync:
    """Approximate-time synchroniser of named streams with a latest-set slot; thread-safe.

    ``add()`` is called from the subscription callbacks (cheap: a deque append and a search over at most
    ``len(names) * queue_size`` stamps); ``take()`` is called by the worker thread and blocks until a set waits.
    ``on_set`` (optional) is called with each completed set, outside the lock.
    """

    def __init__(self, names: Sequence[str], slop: float = 0.05, queue_size: int = 5, reset_after: float = 1.0,
                 on_set: Callable[[SyncedSet], None] | None = None):
        names = list(names)
        if not names or len(set(names)) != len(names):
            raise ConfigError(f'camera names must be non-empty and unique, got {names}')
        if not slop >= 0:
            raise ConfigError(f'slop must be >= 0 seconds, got {slop}')
        if int(queue_size) < 1:
            raise ConfigError(f'queue_size must be >= 1, got {queue_size}')
        self.names = tuple(names)
        self.slop_ns = int(round(slop * NS))
        self.queue_size = int(queue_size)
        self.reset_after_ns = int(round(reset_after * NS))
        self.on_set = on_set
        self._queues: dict[str, deque] = {n: deque(maxlen=self.queue_size) for n in names}
        self._last: dict[str, int | None] = {n: None for n in names}
        self._last_arrival: dict[str, float | None] = {n: None for n in names}
        self._cond = threading.Condition()
        self._pending: SyncedSet | None = None
        self._closed = False
        self.sets = 0  # complete sets found
        self.dropped = 0  # complete sets replaced in the slot before the worker took them
        self.taken = 0  # sets handed to the worker
        self.rejected = 0  # messages refused (stamp not newer, unknown camera)
        self.overflow = 0  # unmatched messages pushed out of a full camera queue

    # ---------------------------------------------------------------------------------------------------- input
    def add(self, name: str, stamp_ns: int, payload: Any, arrival: float | None = None) -> str:
        """Offer one message. Returns 'ok', 'set' (it completed a set), 'backwards', 'duplicate', 'reset' (a clock
        reset: accepted, the camera's queue restarted) or 'unknown' (a name that is not synchronised)."""
        stamp_ns = int(stamp_ns)
        completed = None
        with self._cond:
            if name not in self._queues:
                self.rejected += 1
                return 'unknown'
            self._last_arrival[name] = time.monotonic() if arrival is None else arrival
            queue = self._queues[name]
            last = self._last[name]
            status = 'ok'
            if last is not None and stamp_ns <= last:
                if last - stamp_ns > self.reset_after_ns:
                    queue.clear()
                    status = 'reset'
                else:
                    self.rejected += 1
                    return 'duplicate' if stamp_ns == last else 'backwards'
            if len(queue) == queue.maxlen:
                self.overflow += 1
            queue.append((stamp_ns, payload))
            self._last[name] = stamp_ns
            found = self._newest_set()
            if found is not None:
                completed = self._publish(found)
        if completed is not None:
            if self.on_set is not None:
                self.on_set(completed)
            return 'set' if status == 'ok' else status
        return status

    def _newest_set(self) -> dict[str, tuple[int, Any]] | None:
        """The complete set with the newest earliest stamp: windows [s, s + slop] starting at every queued stamp,
        newest first; in a window each camera takes its earliest message (the tightest set for that start)."""
        if any(not q for q in self._queues.values()):
            return None
        starts = sorted({s for q in self._queues.values() for s, _ in q}, reverse=True)
        for start in starts:
            end = start + self.slop_ns
            chosen = {}
            for name, queue in self._queues.items():
                pick = next((m for m in queue if start <= m[0] <= end), None)
                if pick is None:
                    break
                chosen[name] = pick
            else:
                return chosen
        return None

    def _publish(self, chosen: dict[str, tuple[int, Any]]) -> SyncedSet:
        for name, (stamp, _) in chosen.items():  # this set and everything older is used up
            queue = self._queues[name]
            while queue and queue[0][0] <= stamp:
                queue.popleft()
        self.sets += 1
        stamps = {n: chosen[n][0] for n in self.names}
        synced = SyncedSet(max(stamps.values()), stamps, {n: chosen[n][1] for n in self.names}, self.sets)
        if self._pending is not None:
            self.dropped += 1
        self._pending = synced
        self._cond.notify_all()
        return synced

    # --------------------------------------------------------------------------------------------------- output
    def take(self, timeout: float | None = None) -> SyncedSet | None:
        """The newest complete set, removing it from the slot; waits up to ``timeout`` seconds (None: forever).
        Returns None on timeout or after ``close()``."""
        with self._cond:
            if self._pending is None and not self._closed:
                self._cond.wait_for(lambda: self._pending is not None or self._closed, timeout)
            synced, self._pending = self._pending, None
            if synced is not None:
                self.taken += 1
            return synced

    @property
    def pending(self) -> bool:
        with self._cond:
            return self._pending is not None

    def close(self) -> None:
        """Wake a waiting ``take()`` for shutdown."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reset(self) -> None:
        """Forget every queued message and stamp (e.g. after a clock jump); the counters are kept."""
        with self._cond:
            for name in self.names:
                self._queues[name].clear()
                self._last[name] = None
            self._pending = None

    # --------------------------------------------------------------------------------------------------- health
    def ages(self, now: float | None = None) -> dict[str, float | None]:
        """Every camera -> seconds since its last message (None: never heard from)."""
        now = time.monotonic() if now is None else now
        with self._cond:
            return {name: None if t is None else now - t for name, t in self._last_arrival.items()}

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {'sets': self.sets, 'dropped': self.dropped, 'taken': self.taken, 'rejected': self.rejected,
                    'overflow': self.overflow, 'queued': sum(len(q) for q in self._queues.values())}


class KeyedThrottle:
    """Allow one event per ``period`` seconds per key (rclpy throttles per call site, so one warning line shared by
    six cameras would hide five of them; here each camera and kind of problem has its own budget)."""

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic):
        self.period = float(period)
        self.clock = clock
        self._last: dict[Any, float] = {}
        self.suppressed: dict[Any, int] = {}

    def __call__(self, key: Any) -> bool:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        return True

    def take_suppressed(self, key: Any) -> int:
        """How many events of ``key`` were suppressed since the last allowed one (and reset the count)."""
        return self.suppressed.pop(key, 0)


def stamps_within(stamps: Iterable[int], slop: float) -> bool:
    """Whether integer-nanosecond stamps all lie within ``slop`` seconds of each other."""
    stamps = list(stamps)
    return bool(stamps) and max(stamps) - min(stamps) <= int(round(slop * NS))
