"""mapkd-demo's lockstep wait (the player holds a keyframe until the node answered the previous ones): woken by the
answer, given up when the node exits or the wait times out. No ROS: the Recorder's reception is called directly."""
import threading
import time

from mapkd_ros.demo import Recorder


class FakeProc:
    def __init__(self, code=None):
        self.code = code

    def poll(self):
        return self.code


def bare_recorder() -> Recorder:
    rec = object.__new__(Recorder)  # no rclpy context: only the reception bookkeeping
    rec.markers, rec.processing_ms = [], []
    rec.lock = threading.Lock()
    rec.answered = threading.Condition(rec.lock)
    return rec


def test_the_wait_returns_once_the_answers_arrive():
    rec = bare_recorder()
    rec._on_markers(b'first')
    assert rec.wait_for_markers(1, FakeProc(), timeout=0.0)  # already there: no wait
    answer = threading.Timer(0.2, rec._on_markers, args=(b'second',))
    answer.start()
    assert rec.wait_for_markers(2, FakeProc(), timeout=30.0)
    answer.join()
    assert [raw for _, raw in rec.markers] == [b'first', b'second']


def test_the_wait_gives_up_on_a_dead_node_or_at_its_timeout():
    rec = bare_recorder()
    t0 = time.monotonic()
    assert not rec.wait_for_markers(1, FakeProc(code=1), timeout=30.0)  # the node exited: no 30 s wait
    assert time.monotonic() - t0 < 10.0
    assert not rec.wait_for_markers(1, FakeProc(), timeout=0.1)
    assert rec.markers == []
