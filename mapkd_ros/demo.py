"""``mapkd-demo`` (``make demo``): the whole on-vehicle loop on the built-in data, end to end.

1. generates (once, then cached) the synthetic nuScenes-format val scenes from the bundled real maps and tracks;
2. converts them to a rosbag2 MCAP bag (``mapkd-bag-convert``: cameras, CameraInfo, LiDAR, /tf, ground-truth map);
3. starts ``student_node`` in its own process with the shipped demo student weights;
4. plays the bag (``mapkd-bag-play``) and records the node's MarkerArrays (and its processing-time topic);
5. writes ``replay.mcap``: the input topics plus the node's markers (open it in Foxglove);
6. renders PNGs of predictions beside the ground truth for a few frames;
7. prints a summary measured in this run: frames in and out, end-to-end latency (publish of a set's last image ->
   its MarkerArray received) p50 / p95, the node's processing time, and the IoU / mIoU / AP of the replayed
   predictions against the bag's ground-truth map, next to an untrained model of the same architecture run on the
   same frames (the reference "clearly above").

    mapkd-demo [--out outputs/demo] [--weights W] [--backend torch|onnxruntime] [--rate 1.0] [--limit N]
               [--realtime]

The bag is played in lockstep by default: each keyframe's images go out once the node has answered the previous
keyframe, so a machine slower than the bag's rate still scores every frame (with ``--realtime`` the node keeps
only the newest complete set, as on a vehicle, and the frames it drops are not scored).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from mapkd_core.cli import add_debug_flag, command
from mapkd_core.constants import BACKENDS
from mapkd_core.errors import MapkdError, WeightsNotFoundError

from . import DEMO_WEIGHTS

VAL_SCENES = ('scene-0103', 'scene-0916')  # v1.0-mini's mini_val: boston-seaport, singapore-queenstown
MARKERS_TOPIC = '/student_node/map_markers'
PROCESSING_TOPIC = '/student_node/processing_time_ms'
GT_TOPIC = '/map_gt/markers'


class DemoError(MapkdError, RuntimeError):
    """The demo run failed (the node did not come up, or exited): not a bad input, so the exit code is 1."""

    exit_code = 1


def _params_file() -> Path:
    from mapkd_core.paths import config_path
    return Path(config_path('student.yaml'))


def _node_slop_ns(params_file: Path) -> int:
    """The node's synchronisation slop from the params file it runs with: a set's images lie within it."""
    params = yaml.safe_load(params_file.read_text())['student_node']['ros__parameters']
    return int(round(float(params['slop']) * 1e9))


class Recorder:
    """Subscribes (raw CDR) to the node's markers and processing time in its own rclpy context and thread."""

    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Float64
        from visualization_msgs.msg import MarkerArray
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node('mapkd_demo_recorder', context=self.ctx)
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.markers: list[tuple[float, bytes]] = []  # (perf_counter at reception, CDR bytes)
        self.processing_ms: list[float] = []
        self.lock = threading.Lock()
        self.answered = threading.Condition(self.lock)  # notified on every MarkerArray received
        self.sub = self.node.create_subscription(MarkerArray, MARKERS_TOPIC, self._on_markers, qos, raw=True)
        self.sub_p = self.node.create_subscription(Float64, PROCESSING_TOPIC, self._on_processing, qos)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_markers(self, raw: bytes) -> None:
        with self.answered:
            self.markers.append((time.perf_counter(), bytes(raw)))
            self.answered.notify_all()

    def wait_for_markers(self, count: int, proc: subprocess.Popen, timeout: float) -> bool:
        """Block until ``count`` MarkerArrays were received, the node exited or ``timeout`` s passed; True when
        they were received. Woken by each reception (the node's exit is looked at twice a second)."""
        t_end = time.monotonic() + timeout
        with self.answered:
            while len(self.markers) < count:
                left = t_end - time.monotonic()
                if left <= 0 or proc.poll() is not None:
                    return False
                self.answered.wait(min(left, 0.5))
        return True

    def _on_processing(self, msg) -> None:
        with self.lock:
            self.processing_ms.append(float(msg.data))

    def wait_for_node(self, proc: subprocess.Popen, timeout: float) -> None:
        t_end = time.monotonic() + timeout
        while self.sub.get_publisher_count() == 0:
            if proc.poll() is not None:
                raise DemoError(f'student_node exited with code {proc.returncode} before it was ready (see its log)')
            if time.monotonic() > t_end:
                raise DemoError(f'student_node did not come up within {timeout:.0f} s')
            time.sleep(0.1)

    def close(self) -> None:
        # bounded: an executor blocked in its wait set must not hang the demo (shutdown() without a timeout can)
        self.executor.shutdown(timeout_sec=5.0)
        self.ctx.try_shutdown()
        self.thread.join(timeout=5.0)
        self.node.destroy_node()


def _decode_markers(raw: bytes):
    from rclpy.serialization import deserialize_message
    from visualization_msgs.msg import MarkerArray
    return deserialize_message(raw, MarkerArray)


def _read_bag_gt(bag: Path) -> dict[int, list]:
    """Ground-truth MapVectors per keyframe stamp (ns) from the bag's map topic."""
    from rosbags.rosbag2 import Reader

    from .bag.convert import typestore
    from .markers import markers_to_vectors
    store = typestore()
    gt = {}
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == GT_TOPIC]
        for conn, _, raw in reader.messages(connections=conns):
            stamp, vecs = markers_to_vectors(store.deserialize_cdr(raw, conn.msgtype))
            gt[stamp] = vecs
    return gt


def _write_replay(bag_in: Path, out: Path, recorded: list[tuple[int, bytes]]) -> Path:
    """Copy every input message and add the node's markers at their set's stamp, into one MCAP bag."""
    import shutil

    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    from .bag.convert import BAG_VERSION, typestore
    store = typestore()
    if out.exists():
        shutil.rmtree(out)
    with Reader(bag_in) as reader, Writer(out, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=store,
                                             offered_qos_profiles=c.ext.offered_qos_profiles)
                 for c in reader.connections}
        mconn = writer.add_connection(MARKERS_TOPIC, 'visualization_msgs/msg/MarkerArray', typestore=store)
        events = [(t, 0, conns[c.id], bytes(raw)) for c, t, raw in reader.messages()]
        events += [(stamp, 1, mconn, raw) for stamp, raw in recorded]
        events.sort(key=lambda e: (e[0], e[1]))
        for t, _, conn, raw in events:
            writer.write(conn, t, raw)
    return out


def _render(out_dir: Path, frames: list[tuple[int, list, list]], grid, images_by_stamp: dict) -> list[Path]:
    import cv2

    from mapkd_core.eval.pictures import side_by_side, vector_picture
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (stamp, gt, pred) in enumerate(frames):
        bev = side_by_side(vector_picture(gt, grid, scale=4, title='ground truth'),
                           vector_picture(pred, grid, scale=4, title='student (replayed)', show_scores=True))
        front = images_by_stamp.get(stamp)  # RGB; the BEV pictures are BGR (OpenCV), as the file
        if front is not None:
            h = bev.shape[0]
            front = cv2.resize(cv2.cvtColor(front, cv2.COLOR_RGB2BGR), (int(front.shape[1] * h / front.shape[0]), h))
            bev = side_by_side(front, bev)
        path = out_dir / f'frame_{i:02d}.png'
        cv2.imwrite(str(path), bev)
        paths.append(path)
    return paths


def gt_line_width(resolution: float) -> int:
    """Pixels of a rasterised ground-truth line, as the training recipes draw them: about 0.9 m wide (2 px on the
    tiny recipes' 0.6 m grid, 3 px on the CPU recipes' 0.3 m grid), never under 2 px."""
    return max(2, int(0.9 / resolution + 0.5))


def _untrained_reference(weights: Path, root: Path, grid, map_gt, scenes, limit) -> dict:
    """The same architecture with random weights (seed 0), run offline through the Pipeline on the same frames."""
    import tempfile
    import warnings

    import cv2
    import torch

    from mapkd_core.data.index import NuScenesIndex
    from mapkd_core.data.map_gt import MapGroundTruth
    from mapkd_core.eval.polylines import PolylineEvaluator
    from mapkd_core.models import build_model, save_weights
    from mapkd_core.models.io import config_of, without_init_weights
    from mapkd_core.runtime import Pipeline
    warnings.filterwarnings('ignore', message='no ImageNet weights')
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        w = save_weights(build_model(without_init_weights(config_of(weights))), Path(tmp) / 'untrained.safetensors')
        pipe = Pipeline(w, log=lambda *_: None)
    gt_src = MapGroundTruth(root, grid)
    ev = PolylineEvaluator(grid, map_gt)
    for f in NuScenesIndex(root, 'v1.0-mini', 'mini_val'):
        if f.scene_name not in scenes:
            continue
        images = [cv2.cvtColor(cv2.imread(str(c.path)), cv2.COLOR_BGR2RGB) for c in f.cameras]
        ev.update(pipe(images, f.intrinsics, f.cam_to_ego).polylines, gt_src.vectors(f.city, f.ego_to_global))
    return ev.compute()


def _pct(v) -> str:
    return '-' if v is None else f'{100 * v:.1f}'


#: lockstep replay: how long the player waits for the node to answer the previous keyframe before it goes on
ANSWER_TIMEOUT_S = 60.0


def run(out: Path, weights: Path, backend: str, rate: float, limit: int, draw: int, node_timeout: float,
        log=print, realtime: bool = False) -> dict:
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    # one DDS profile for this process and the node: buffers large enough for a burst of six JPEGs
    from mapkd_core.paths import config_path
    os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(config_path('fastdds_large_buffers.xml')))
    from mapkd_core.config import MapGtConfig
    from mapkd_core.data.synth import SynthConfig
    from mapkd_core.data.synth.cache import synthetic_dataroot
    from mapkd_core.eval.polylines import PolylineEvaluator
    from mapkd_core.models.io import config_of

    from .bag.convert import convert
    from .bag.play import play
    from .markers import markers_to_vectors
    if not weights.is_file():
        raise WeightsNotFoundError(f'demo weights not found: {weights} (train them with the README\'s commands, or '
                                   'pass --weights)')
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = config_of(weights)
    grid = model_cfg.grid
    map_gt = MapGtConfig(line_width=gt_line_width(grid.xbound[2]), overlap_extra_width=2)

    log(f'[1/6] synthetic val scenes {", ".join(VAL_SCENES)} (generated once, then cached)')
    root = synthetic_dataroot(SynthConfig(scenes=VAL_SCENES, limit=limit), progress=True)
    log(f'      dataroot: {root}')

    log('[2/6] converting to a rosbag2 MCAP bag')
    bag_in = out / 'input_bag'
    summary = convert(root, bag_in, scenes=list(VAL_SCENES), overwrite=True, grid=grid, progress=True)
    log(f'      {bag_in}: {summary["messages"]} messages')

    log(f'[3/6] starting student_node ({backend}, {weights.name})')
    node_log = open(out / 'student_node.log', 'w')
    params_file = _params_file()
    cmd = [sys.executable, '-m', 'mapkd_ros.student_node', '--ros-args', '--params-file', str(params_file),
           '-p', f'model:={weights}', '-p', f'backend:={backend}']
    proc = subprocess.Popen(cmd, stdout=node_log, stderr=subprocess.STDOUT, env=dict(os.environ))
    recorder = None
    try:
        recorder = Recorder()
        recorder.wait_for_node(proc, node_timeout)
        published: dict[str, list[tuple[int, float]]] = {}
        images = [t for t in summary['counts'] if t.endswith('image_rect_compressed')]
        infos = [t for t in summary['counts'] if t.endswith('camera_info')]
        keyframes = []  # the first image stamp of each keyframe played (a set's cameras lie within the slop)
        set_slop_ns = _node_slop_ns(params_file)

        def on_publish(topic, stamp, t):
            published.setdefault(topic, []).append((stamp, t))
            if realtime or topic not in images or (keyframes and abs(stamp - keyframes[-1]) <= set_slop_ns):
                return
            # lockstep (the default): the first image of a new keyframe is out, the keyframe is not complete yet;
            # wait until the node answered every earlier keyframe, so that a machine slower than the bag's rate
            # scores every frame instead of the node dropping the sets it could not take in time (it keeps the
            # newest complete set, as on a vehicle; --realtime replays that way)
            recorder.wait_for_markers(len(keyframes), proc, ANSWER_TIMEOUT_S)
            keyframes.append(stamp)

        log(f'[4/6] playing the bag at {rate:g}x' + (' (real time: the node may drop sets)' if realtime else
                                                      ', each keyframe after the node answered the previous one'))
        play(bag_in, rate=rate, wait_for=images + infos, wait_for_subscribers=node_timeout, on_publish=on_publish,
             log=lambda m: log('      ' + m))
        expected = summary['counts'].get(images[0], 0) if images else 0
        # the last sets may still be in the node: wait until every set is answered, or nothing new came for 5 s
        last_count, last_change = -1, time.monotonic()
        while len(recorder.markers) < expected and proc.poll() is None and time.monotonic() - last_change < 5.0:
            if len(recorder.markers) != last_count:
                last_count, last_change = len(recorder.markers), time.monotonic()
            time.sleep(0.1)
        time.sleep(0.3)
        with recorder.lock:
            received = list(recorder.markers)
            processing = list(recorder.processing_ms)
    finally:
        if recorder is not None:
            recorder.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        node_log.close()

    log('[5/6] scoring the replayed markers against the bag\'s ground truth')
    gt = _read_bag_gt(bag_in)
    slop_ns = _node_slop_ns(params_file)
    gt_stamps = np.array(sorted(gt))
    image_events = sorted((s, t) for topic, ev in published.items() if topic.endswith('image_rect_compressed')
                          for s, t in ev)
    ev_stamps = np.array([s for s, _ in image_events], dtype=np.int64)
    ev_times = np.array([t for _, t in image_events])
    preds: dict[int, list] = {}
    latencies = []
    recorded = []
    for t_recv, raw in received:
        stamp, vecs = markers_to_vectors(_decode_markers(raw))
        recorded.append((stamp, raw))
        # the set's images: stamps within the node's slop of the set stamp; latency from the last one published
        near = np.abs(ev_stamps - stamp) <= slop_ns
        if near.any():
            latencies.append(1e3 * (t_recv - ev_times[near].max()))
        k = int(np.argmin(np.abs(gt_stamps - stamp)))
        if abs(int(gt_stamps[k]) - stamp) <= slop_ns:
            preds[int(gt_stamps[k])] = vecs
    ev = PolylineEvaluator(grid, map_gt)
    for s in gt_stamps:
        ev.update(preds.get(int(s), []), gt[int(s)])
    scores = ev.compute()
    log('      scoring an untrained model of the same architecture on the same frames (reference)')
    untrained = _untrained_reference(weights, root, grid, map_gt, VAL_SCENES, limit)

    log('[6/6] writing replay.mcap and pictures')
    replay = _write_replay(bag_in, out / 'replay', recorded)
    import cv2

    from mapkd_core.data.index import NuScenesIndex
    frames = [f for f in NuScenesIndex(root, 'v1.0-mini', 'mini_val') if f.scene_name in VAL_SCENES]
    pick = np.linspace(0, len(gt_stamps) - 1, num=min(draw, len(gt_stamps))).round().astype(int) if len(
        gt_stamps) else []
    fronts = {}
    for i in pick:
        s = int(gt_stamps[i])
        f = min(frames, key=lambda fr: abs(fr.timestamp * 1000 - s))
        fronts[s] = cv2.cvtColor(cv2.imread(str(f.cameras[1].path)), cv2.COLOR_BGR2RGB)
    pictures = _render(out / 'frames', [(int(gt_stamps[i]), gt[int(gt_stamps[i])], preds.get(int(gt_stamps[i]), []))
                                         for i in pick], grid, fronts)

    lat = np.array(latencies) if latencies else np.array([np.nan])
    result = {
        'weights': str(weights), 'model': model_cfg.name, 'backend': backend, 'rate': rate, 'realtime': realtime,
        'frames_in_bag': len(gt_stamps), 'marker_arrays_received': len(received),
        'frames_scored_with_prediction': len(preds),
        'latency_ms': {'p50': float(np.nanpercentile(lat, 50)), 'p95': float(np.nanpercentile(lat, 95)),
                       'what': 'publish of the last image of a set -> its MarkerArray received (this process)'},
        'node_processing_ms': {'p50': float(np.median(processing)) if processing else None,
                               'p95': float(np.percentile(processing, 95)) if processing else None},
        'replayed': scores, 'untrained_same_frames': untrained,
        'replay_bag': str(replay), 'pictures': [str(p) for p in pictures],
        'seconds': time.perf_counter() - t_start,
    }
    (out / 'summary.json').write_text(json.dumps(result, indent=2))
    log('')
    log(f'mapkd-demo summary ({result["seconds"]:.0f} s)')
    log(f'  frames: {len(gt_stamps)} in the bag, {len(received)} MarkerArrays received, '
        f'{len(preds)} matched to a ground-truth frame')
    log(f'  end-to-end latency: p50 {result["latency_ms"]["p50"]:.1f} ms, p95 {result["latency_ms"]["p95"]:.1f} ms'
        f'; node processing p50 {_pct_ms(result["node_processing_ms"]["p50"])}')
    for name, rep in (('student (replayed)', scores), ('untrained, same frames', untrained)):
        ious = ', '.join(f'{k} {_pct(rep["iou"].get(k))}' for k in ('divider', 'ped_crossing', 'boundary'))
        log(f'  {name:<24} IoU {ious}; mIoU {_pct(rep["miou"])}; mAP {_pct(rep["map"])}')
    log(f'  replay bag (input topics + {MARKERS_TOPIC}, open in Foxglove): {replay}')
    log(f'  pictures: {out / "frames"}  summary: {out / "summary.json"}')
    return result


def _pct_ms(v) -> str:
    return '-' if v is None else f'{v:.1f} ms'


@command('mapkd-demo')
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='mapkd-demo', description=__doc__.split('\n')[0])
    p.add_argument('--out', default='outputs/demo', help='output folder (default outputs/demo)')
    p.add_argument('--weights', default=str(DEMO_WEIGHTS), help='student weights (default: the shipped demo student)')
    p.add_argument('--backend', default='onnxruntime', choices=BACKENDS)
    p.add_argument('--rate', type=float, default=1.0, help='playback rate factor (default 1.0)')
    p.add_argument('--limit', type=int, default=0, help='keyframes per scene (default 0 = all, about 40)')
    p.add_argument('--draw', type=int, default=4, help='frames to render as PNG')
    # 300 s: the node imports torch and ROS and builds its ONNX session; on a 2-core machine saturated by trainings
    # that took over 120 s once (CI, 2026-12-02). A node that exits is reported at once, whatever this is.
    p.add_argument('--node-timeout', type=float, default=300.0,
                   help='seconds to wait for the node to come up (default 300)')
    p.add_argument('--realtime', action='store_true',
                   help='play at the bag\'s rate regardless of the node (default: each keyframe waits until the node '
                        'answered the previous one, so every frame is scored)')
    add_debug_flag(p)
    args = p.parse_args(argv)
    run(Path(args.out), Path(args.weights), args.backend, args.rate, args.limit, args.draw, args.node_timeout,
        realtime=args.realtime)
    return 0


if __name__ == '__main__':
    sys.exit(main())
