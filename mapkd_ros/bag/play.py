"""``mapkd-bag-play``: publish a rosbag2 bag (MCAP or sqlite3) with rclpy, a small stand-in for ``ros2 bag play``.

One node (``mapkd_bag_player``) with one publisher per topic. The stored CDR bytes are published as they are
(``Publisher.publish(bytes)``), so no message is deserialised and the header stamps are the recorded ones. Message
types come from the installed message packages (``sensor_msgs/msg/CompressedImage`` -> ``sensor_msgs.msg``);
a topic whose type is not importable here (e.g. ``tf2_msgs`` on a pip-only ROS install) is skipped with a note.

* Waits for subscribers before it starts: for every topic of ``wait_for`` (default: any played topic) to have at
  least one, up to ``wait_for_subscribers`` seconds (0 = do not wait); it fails naming the topics still without one.
* Paces by the recorded (log) times divided by ``rate``; a gap longer than ``max_gap`` seconds of bag time (between
  scenes recorded on different days) is shortened to ``max_gap``. ``rate=inf`` publishes as fast as it can.
* ``loop`` repeats the bag (until Ctrl-C, or ``loops`` times); ``remap`` renames topics; ``topics`` selects them.
* QoS: reliable by default (``reliability='best_effort'`` to change), keep-last ``depth``; topics recorded with
  transient-local durability (``/tf_static``) are published transient-local.
* At the end it waits (up to 5 s) for reliable subscribers to acknowledge, then prints what it sent per topic.

Usage::

    mapkd-bag-play bags/synth --rate 2 --loop --remap /CAM_FRONT/image_rect_compressed:=/cam/front
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from mapkd_core.cli import add_debug_flag, command

from . import BagError

NODE_NAME = 'mapkd_bag_player'


def message_class(msgtype: str):
    """The rclpy message class of a ROS 2 type name (``pkg/msg/Name``), or None if it is not installed here."""
    parts = msgtype.split('/')
    if len(parts) != 3:
        return None
    pkg, sub, name = parts
    try:
        module = importlib.import_module(f'{pkg}.{sub}')
    except ImportError:
        return None
    return getattr(module, name, None)


def parse_remap(items: Optional[Sequence[str]]) -> dict[str, str]:
    """``['old:=new', ...]`` -> ``{old: new}``; raises BagError on a malformed item."""
    out = {}
    for item in items or ():
        old, sep, new = item.partition(':=')
        if not sep or not old.strip() or not new.strip():
            raise BagError(f'bad remap {item!r}: expected OLD:=NEW')
        out[old.strip()] = new.strip()
    return out


def _open_reader(bag):
    from rosbags.rosbag2 import Reader
    path = Path(bag)
    if not (path / 'metadata.yaml').is_file():
        raise BagError(f'not a rosbag2 bag (no {path / "metadata.yaml"}): {path}')
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # rosbags raises its own ReaderError types
        raise BagError(f'cannot open bag {path}: {exc}') from exc
    return reader


def _qos(depth: int, reliability: str, latched: bool):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    rel = {'reliable': ReliabilityPolicy.RELIABLE, 'best_effort': ReliabilityPolicy.BEST_EFFORT}[reliability]
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=max(1, int(depth)), reliability=rel,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


def _is_latched(conn) -> bool:
    from rosbags.interfaces import QosDurability
    profiles = getattr(conn.ext, 'offered_qos_profiles', None) or []
    return any(p.durability == QosDurability.TRANSIENT_LOCAL for p in profiles)


def play(bag, rate: float = 1.0, loop: bool = False, remap: Optional[Mapping[str, str]] = None,
         wait_for_subscribers: float = 10.0, topics: Optional[Sequence[str]] = None,
         wait_for: Optional[Sequence[str]] = None, loops: Optional[int] = None, max_gap: float = 1.0,
         depth: int = 100, reliability: str = 'reliable', ros_args: Optional[Sequence[str]] = None,
         stop: Optional[threading.Event] = None, log: Optional[Callable[[str], None]] = print,
         on_publish: Optional[Callable[[str, int, float], None]] = None) -> dict[str, int]:
    """Publish the messages of ``bag``; return the number sent per (remapped) topic.

    ``topics`` (recorded names) selects topics; ``remap`` maps recorded names to published names; ``wait_for``
    lists (published) topics that must each have a subscriber before playback starts (default: at least one
    subscriber on any played topic), waiting up to ``wait_for_subscribers`` seconds (0: start at once).
    ``loop`` repeats forever (or ``loops`` passes in all); ``stop`` (an Event) ends playback early. The node
    lives in its own rclpy context, so this can run beside other nodes of the same process. ``on_publish(topic,
    stamp_ns, perf_counter_s)`` is called after each message is published (the demo measures latency with it).
    """
    if not rate > 0:
        raise BagError(f'rate must be > 0 (inf = as fast as possible), got {rate}')
    if reliability not in ('reliable', 'best_effort'):
        raise BagError(f'reliability must be reliable or best_effort, got {reliability!r}')
    if loops is not None and loops < 1:
        raise BagError(f'loops must be >= 1, got {loops}')
    say = log or (lambda _msg: None)
    remap = dict(remap or {})
    stop = stop or threading.Event()
    reader = _open_reader(bag)
    try:
        recorded = sorted({c.topic for c in reader.connections})
        bad = sorted(set(topics or ()) - set(recorded)) + sorted(set(remap) - set(recorded))
        if bad:
            raise BagError(f'topic(s) {bad} not in bag {bag}; it has: {recorded}')
        chosen = [c for c in reader.connections if not topics or c.topic in topics]
        by_topic: dict[str, tuple] = {}  # recorded topic -> (msg class, type, latched)
        skipped: dict[str, str] = {}
        for c in chosen:
            if c.topic in by_topic or c.topic in skipped:
                if c.topic in by_topic and by_topic[c.topic][1] != c.msgtype:
                    say(f'note: {c.topic} also has type {c.msgtype} in the bag; only {by_topic[c.topic][1]} is played')
                continue
            cls = message_class(c.msgtype)
            if cls is None:
                skipped[c.topic] = c.msgtype
            else:
                by_topic[c.topic] = (cls, c.msgtype, _is_latched(c))
        for t, ty in sorted(skipped.items()):
            say(f'note: skipping {t} ({ty}): the message package is not installed for this Python')
        if not by_topic:
            raise BagError(f'no topic of bag {bag} can be published here (skipped: {sorted(skipped)})')
        published = {t: remap.get(t, t) for t in by_topic}
        dup = sorted({n for n in published.values() if list(published.values()).count(n) > 1})
        if dup:
            raise BagError(f'remapping makes several topics publish on {dup}')
        wait_for = list(wait_for or ())
        unknown = sorted(set(wait_for) - set(published.values()))
        if unknown:
            raise BagError(f'wait_for topic(s) {unknown} are not played; played: {sorted(published.values())}')
        conns = [c for c in chosen if c.topic in by_topic and c.msgtype == by_topic[c.topic][1]]
        return _run(reader, conns, by_topic, published, rate, loop, loops, wait_for_subscribers, wait_for,
                    max_gap, depth, reliability, ros_args, stop, say, skipped, on_publish)
    finally:
        reader.close()


def _run(reader, conns, by_topic, published, rate, loop, loops, wait_s, wait_for, max_gap, depth, reliability,
         ros_args, stop, say, skipped, on_publish=None) -> dict[str, int]:
    import rclpy
    from rclpy.duration import Duration
    ctx = rclpy.Context()
    rclpy.init(args=list(ros_args) if ros_args else None, context=ctx)
    node = None
    counts = {published[t]: 0 for t in by_topic}
    t_start = time.perf_counter()
    passes = 0
    interrupted = False
    try:
        node = rclpy.create_node(NODE_NAME, context=ctx)
        pubs = {t: node.create_publisher(cls, published[t], _qos(depth, reliability, latched))
                for t, (cls, _, latched) in by_topic.items()}
        if wait_s and wait_s > 0:
            _wait_subscribers(pubs, published, wait_for, wait_s, stop)
        say(f'{NODE_NAME}: playing {len(pubs)} topic(s) at {rate:g}x'
            + (' (loop)' if loop else '') + ': ' + ', '.join(sorted(published.values())))
        max_gap_ns = max(0.0, float(max_gap)) * 1e9
        t_start = time.perf_counter()
        try:
            while not stop.is_set():
                wall0, prev, virtual = time.perf_counter(), None, 0.0
                for conn, stamp, raw in reader.messages(connections=conns):
                    if stop.is_set():
                        break
                    if prev is not None:
                        virtual += min(max(0, stamp - prev), max_gap_ns)
                    prev = stamp
                    if math.isfinite(rate):
                        _sleep_until(wall0 + virtual * 1e-9 / rate, stop)
                        if stop.is_set():
                            break
                    pubs[conn.topic].publish(raw if isinstance(raw, bytes) else bytes(raw))
                    counts[published[conn.topic]] += 1
                    if on_publish is not None:
                        on_publish(published[conn.topic], stamp, time.perf_counter())
                passes += 1
                if not loop or (loops is not None and passes >= loops):
                    break
        except KeyboardInterrupt:
            interrupted = True
        if reliability == 'reliable':
            for pub in pubs.values():
                if pub.get_subscription_count():
                    pub.wait_for_all_acked(Duration(seconds=5))
    finally:
        if node is not None:
            node.destroy_node()
        ctx.try_shutdown()
    seconds = time.perf_counter() - t_start
    say(format_counts(counts, {published[t]: v[1] for t, v in by_topic.items()}, seconds, passes, interrupted,
                      skipped))
    return counts


def _wait_subscribers(pubs, published, wait_for, timeout_s: float, stop: threading.Event) -> None:
    """Poll the publishers' subscriber counts (discovery) until the condition holds or the timeout passes."""
    by_name = {published[t]: p for t, p in pubs.items()}
    deadline = time.monotonic() + float(timeout_s)
    while True:
        if wait_for:
            missing = [n for n in wait_for if by_name[n].get_subscription_count() == 0]
            if not missing:
                return
        else:
            if any(p.get_subscription_count() > 0 for p in by_name.values()):
                return
            missing = sorted(by_name)
        if time.monotonic() >= deadline or stop.is_set():
            what = f'topic(s) {missing}' if wait_for else 'any of the played topics'
            raise BagError(f'no subscriber on {what} after {timeout_s:g} s (use --wait-subscribers 0 to play '
                           'without waiting; check ROS_DOMAIN_ID / ROS_AUTOMATIC_DISCOVERY_RANGE)')
        stop.wait(0.02)


def _sleep_until(target: float, stop: threading.Event) -> None:
    while True:
        left = target - time.perf_counter()
        if left <= 0 or stop.is_set():
            return
        if left > 0.05:
            stop.wait(left - 0.02)
        else:
            time.sleep(left)


def format_counts(counts: Mapping[str, int], types: Mapping[str, str], seconds: float, passes: int,
                  interrupted: bool = False, skipped: Optional[Mapping[str, str]] = None) -> str:
    total = sum(counts.values())
    head = (f'{NODE_NAME}: sent {total} message(s) on {len(counts)} topic(s) in {seconds:.2f} s, '
            f'{passes} pass(es)' + (' (interrupted)' if interrupted else ''))
    width = max((len(t) for t in counts), default=0)
    lines = [head] + [f'  {t:<{width}}  {types.get(t, ""):<36} {counts[t]:>6}' for t in sorted(counts)]
    for t, ty in sorted((skipped or {}).items()):
        lines.append(f'  {t:<{width}}  {ty:<36} skipped (type not installed)')
    return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='mapkd-bag-play',
                                description='Publish a rosbag2 bag (MCAP or sqlite3) with rclpy: waits for '
                                            'subscribers, paces by the recorded times, loops, remaps.')
    p.add_argument('bag', help='bag folder (holds metadata.yaml)')
    p.add_argument('--rate', type=float, default=1.0, help='playback rate factor (default 1; inf = no pacing)')
    p.add_argument('--loop', action='store_true', help='repeat until Ctrl-C')
    p.add_argument('--loops', type=int, default=None, help='with --loop: stop after this many passes')
    p.add_argument('--remap', action='append', default=[], metavar='OLD:=NEW', help='rename a topic (repeatable)')
    p.add_argument('--topics', help='comma-separated recorded topics to play (default: all)')
    p.add_argument('--wait-subscribers', type=float, default=10.0, metavar='SECONDS',
                   help='wait up to this long for subscribers before starting (default 10; 0 = do not wait)')
    p.add_argument('--wait-for', action='append', default=[], metavar='TOPIC',
                   help='a (published) topic that must have a subscriber before starting (repeatable; '
                        'default: any played topic)')
    p.add_argument('--max-gap', type=float, default=1.0,
                   help='longest pause in seconds of bag time (longer gaps are shortened; default 1)')
    p.add_argument('--qos-depth', type=int, default=100, help='publisher history depth (default 100)')
    p.add_argument('--best-effort', action='store_true', help='best-effort QoS instead of reliable')
    add_debug_flag(p)
    return p


def split_ros_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split a command line into ours and the ``--ros-args ... [--]`` sections (kept for rclpy.init).

    Done here rather than with rclpy's ``remove_ros_args`` because that also takes bare ``old:=new`` items (the
    deprecated remap syntax) away from our own ``--remap old:=new``."""
    ours, ros, inside = [], [], False
    for item in argv:
        if item == '--ros-args':
            inside = True
            ros.append(item)
        elif inside and item == '--':
            inside = False
        elif inside:
            ros.append(item)
        else:
            ours.append(item)
    return ours, ros


@command('mapkd-bag-play')
def main(argv: Optional[Sequence[str]] = None) -> int:
    ours, ros = split_ros_args(list(argv))
    ros_args = ['mapkd-bag-play'] + ros
    args = build_parser().parse_args(ours)
    topics = [t.strip() for t in args.topics.split(',') if t.strip()] if args.topics else None
    play(args.bag, rate=args.rate, loop=args.loop, loops=args.loops, remap=parse_remap(args.remap),
         wait_for_subscribers=args.wait_subscribers, topics=topics, wait_for=args.wait_for or None,
         max_gap=args.max_gap, depth=args.qos_depth,
         reliability='best_effort' if args.best_effort else 'reliable', ros_args=ros_args,
         log=lambda m: print(m, flush=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
