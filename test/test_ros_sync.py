"""The approximate-time synchroniser and its latest-set slot (pure Python, no ROS)."""
import threading
import time

import pytest

from mapkd_core.constants import CAMERAS
from mapkd_core.errors import ConfigError
from mapkd_ros.sync import NS, ApproximateTimeSync, KeyedThrottle, stamps_within

MS = 1_000_000


def offer(sync, stamp_ns, offsets=None, skip=()):
    """Offer one message per camera at ``stamp_ns`` (+ per-camera offsets in ns); returns the statuses."""
    offsets = offsets or {}
    return {c: sync.add(c, stamp_ns + offsets.get(c, 0), (c, stamp_ns)) for c in CAMERAS if c not in skip}


def test_a_set_within_slop_is_emitted_with_the_newest_stamp():
    sync = ApproximateTimeSync(CAMERAS, slop=0.05, queue_size=5)
    t0 = 1_532_402_927_600 * MS
    # the real keyframe's camera stamps are spread over ~43 ms
    offsets = {c: i * 8 * MS for i, c in enumerate(CAMERAS)}
    statuses = offer(sync, t0, offsets)
    assert list(statuses.values()) == ['ok'] * 5 + ['set']
    got = sync.take(timeout=0)
    assert got is not None and got.seq == 1
    assert got.stamp_ns == t0 + 40 * MS and got.spread_ns == 40 * MS
    assert got.payloads == {c: (c, t0) for c in CAMERAS}
    assert sync.stats() == {'sets': 1, 'dropped': 0, 'taken': 1, 'rejected': 0, 'overflow': 0, 'queued': 0}
    assert sync.take(timeout=0) is None


def test_a_camera_200ms_off_is_not_fused_and_the_next_good_set_is():
    sync = ApproximateTimeSync(CAMERAS, slop=0.05, queue_size=5)
    t0 = 10 * NS
    offer(sync, t0, {'CAM_BACK': 200 * MS})
    assert sync.sets == 0 and sync.take(timeout=0) is None
    offer(sync, t0 + NS)
    got = sync.take(timeout=0)
    assert got.stamp_ns == t0 + NS and set(got.stamps_ns.values()) == {t0 + NS}
    assert sync.sets == 1 and sync.dropped == 0


def test_arrival_order_across_cameras_does_not_matter():
    sync = ApproximateTimeSync(CAMERAS, slop=0.05, queue_size=5)
    # camera streams interleaved and one camera a full frame ahead of the others
    for c in CAMERAS[:3]:
        sync.add(c, 1 * NS, c)
    sync.add('CAM_BACK', 1 * NS + 10 * MS, 'b1')
    sync.add('CAM_BACK', 1 * NS + 90 * MS, 'b2')  # the next frame of CAM_BACK arrives early
    for c in ('CAM_BACK_LEFT', 'CAM_BACK_RIGHT'):
        sync.add(c, 1 * NS + 20 * MS, c)
    got = sync.take(timeout=0)
    assert got.payloads['CAM_BACK'] == 'b1'
    assert sync.stats()['queued'] == 1  # b2 waits for its partners


def test_the_newest_complete_set_wins_and_older_messages_are_discarded():
    sync = ApproximateTimeSync(('A', 'B'), slop=0.06, queue_size=5)
    sync.add('A', 0, 'a0')
    sync.add('A', 100 * MS, 'a1')
    assert sync.add('B', 50 * MS, 'b') == 'set'  # fits with a0 and with a1: the newer pair is taken
    got = sync.take(timeout=0)
    assert got.payloads == {'A': 'a1', 'B': 'b'} and got.stamp_ns == 100 * MS
    assert sync.stats()['queued'] == 0


def test_queues_are_bounded_per_camera():
    sync = ApproximateTimeSync(CAMERAS, slop=0.01, queue_size=3)
    for i in range(50):  # CAM_FRONT alone: never a set
        sync.add('CAM_FRONT', i * 100 * MS, i)
    assert sync.stats()['queued'] == 3 and sync.overflow == 47
    offer(sync, 4900 * MS, skip=('CAM_FRONT',))  # matches the newest CAM_FRONT message that is still queued
    assert sync.take(timeout=0).payloads['CAM_FRONT'] == 49


def test_stamps_going_backwards_are_rejected_and_a_big_jump_back_resets_the_camera():
    sync = ApproximateTimeSync(CAMERAS, slop=0.05, queue_size=5, reset_after=1.0)
    assert sync.add('CAM_FRONT', 5 * NS, 'x') == 'ok'
    assert sync.add('CAM_FRONT', 5 * NS, 'dup') == 'duplicate'
    assert sync.add('CAM_FRONT', 5 * NS - 100 * MS, 'old') == 'backwards'
    assert sync.rejected == 2
    assert sync.add('CAM_FRONT', 1 * NS, 'loop') == 'reset'  # a bag played again from its start
    assert sync.stats()['queued'] == 1
    assert sync.add('NOT_A_CAMERA', 1, None) == 'unknown'
    # after the reset the camera synchronises at the new times
    offer(sync, 1 * NS, skip=('CAM_FRONT',))
    assert sync.take(timeout=0).payloads['CAM_FRONT'] == 'loop'


def test_latest_slot_keeps_only_the_newest_set_and_counts_drops():
    sets_seen = []
    sync = ApproximateTimeSync(CAMERAS, slop=0.05, queue_size=5, on_set=sets_seen.append)
    for i in range(4):  # the worker is "busy": nobody takes
        offer(sync, (i + 1) * NS)
    assert [s.seq for s in sets_seen] == [1, 2, 3, 4]
    assert sync.dropped == 3 and sync.pending
    got = sync.take(timeout=0)
    assert got.seq == 4 and got.stamp_ns == 4 * NS
    assert not sync.pending and sync.take(timeout=0.01) is None


def test_take_blocks_until_a_set_arrives_and_close_wakes_it():
    sync = ApproximateTimeSync(CAMERAS, slop=0.05)
    out = []
    waiter = threading.Thread(target=lambda: out.append(sync.take(timeout=10)))
    waiter.start()
    time.sleep(0.05)
    offer(sync, NS)
    waiter.join(5)
    assert out and out[0].stamp_ns == NS
    waiter = threading.Thread(target=lambda: out.append(sync.take(timeout=10)))
    waiter.start()
    sync.close()
    waiter.join(5)
    assert not waiter.is_alive() and out[1] is None


def test_slow_consumer_gets_the_newest_sets_and_nothing_is_lost_or_queued():
    """Producer at ~200 Hz, consumer 10x slower: every set is either taken or counted as dropped, the consumer
    always receives newer sets, and after the producer stops the newest set is the one taken last."""
    sync = ApproximateTimeSync(CAMERAS, slop=0.05, queue_size=2)
    taken = []
    stop = threading.Event()

    def consume():
        while not stop.is_set() or sync.pending:
            s = sync.take(timeout=0.05)
            if s is not None:
                taken.append(s.seq)
                time.sleep(0.03)

    worker = threading.Thread(target=consume)
    worker.start()
    for i in range(100):
        offer(sync, (i + 1) * 100 * MS)
        time.sleep(0.002)
    stop.set()
    worker.join(10)
    assert taken == sorted(taken) and taken[-1] == 100
    assert sync.sets == 100 and len(taken) + sync.dropped == 100 and sync.dropped > 50
    assert sync.stats()['queued'] == 0


def test_ages_of_each_camera_since_its_last_message():
    sync = ApproximateTimeSync(CAMERAS, slop=0.05)
    sync.add('CAM_FRONT', NS, None, arrival=100.0)
    sync.add('CAM_BACK', NS, None, arrival=101.5)
    ages = sync.ages(now=101.8)
    assert ages['CAM_FRONT'] == pytest.approx(1.8) and ages['CAM_BACK'] == pytest.approx(0.3)
    assert set(ages) == set(CAMERAS) and [ages[c] for c in CAMERAS if c not in ('CAM_FRONT', 'CAM_BACK')] == [None] * 4
    sync.add('CAM_FRONT', 2 * NS, None, arrival=101.9)  # a newer message restarts the age
    assert sync.ages(now=102.0)['CAM_FRONT'] == pytest.approx(0.1)


def test_keyed_throttle_limits_each_key_on_its_own():
    now = [0.0]
    throttle = KeyedThrottle(5.0, clock=lambda: now[0])
    assert throttle(('image', 'CAM_FRONT')) and throttle(('image', 'CAM_BACK'))
    assert not throttle(('image', 'CAM_FRONT'))
    now[0] = 4.9
    assert not throttle(('image', 'CAM_FRONT'))
    now[0] = 5.0
    assert throttle(('image', 'CAM_FRONT'))
    assert throttle.take_suppressed(('image', 'CAM_FRONT')) == 2 and throttle.take_suppressed('other') == 0


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigError, match='unique'):
        ApproximateTimeSync(['A', 'A'])
    with pytest.raises(ConfigError, match='slop'):
        ApproximateTimeSync(['A'], slop=-1)
    with pytest.raises(ConfigError, match='queue_size'):
        ApproximateTimeSync(['A'], queue_size=0)
    assert stamps_within([0, 50 * MS], 0.05) and not stamps_within([0, 51 * MS], 0.05)
