"""The student_node's own overhead: end-to-end latency through ROS 2 against the Pipeline alone, on the same frames.

The real keyframe's six JPEGs (as stored by nuScenes, ~150-250 kB each) are published as ``CompressedImage`` with
their CameraInfo from this process to a ``student_node`` started in its own process (``python -m
mapkd_ros.student_node --ros-args --params-file ...``, Fast DDS over loopback, reliable QoS, a private DDS domain).
One set at a time (the next set only after the previous MarkerArray came back, so nothing queues or drops):

* **end-to-end**: from the return of the sixth image's ``publish()`` to the MarkerArray's arrival here;
* **node processing**: the node's own ``~/processing_time_ms`` (decode, Pipeline, markers) for the same sets;
* **pipeline only**: ``Pipeline(images, K, T)`` called directly in this process on the decoded full-size images (the
  decode is not counted: the Pipeline's input is decoded images).

* **decode + pipeline**: the node's work without ROS, in this process: the JPEG bytes decoded at reduced size as the
  node decodes them (:mod:`mapkd_ros.conversions`), then the Pipeline.

node overhead = median end-to-end - median pipeline-only, as a percentage of the pipeline time (it can be negative:
the node decodes JPEGs at reduced size, which makes the Pipeline's resize cheaper than on full-size images); ROS
overhead = median end-to-end - median decode + pipeline (transport, synchronisation, markers, thread hand-over).
Median of ``--runs`` after ``--warmup`` runs.

DDS: the end-to-end part runs twice, each in a fresh process: with Fast DDS's defaults, and with a profile that only
enlarges the transport buffers (``--dds``; the XML is ``config/fastdds_large_buffers.xml``, passed to both processes with
``FASTDDS_DEFAULT_PROFILES_FILE``). With the defaults, a burst of six ~150 kB images overflows the 212 kB socket
buffers / 512 kB shared-memory segment of a small machine and the lost fragments are repaired by the reliable
protocol 0.5-3 s later; that is the transport's configuration, not the node, and the profile removes it.

Both sides run torch with ``--threads`` intra-op threads (default 1, set with ``torch.set_num_threads`` here and
``OMP_NUM_THREADS`` for the node): on a 2-core machine shared with other work, two OpenMP threads that spin-wait for
each other turn a 35 ms inference into 1-3 s whenever another process holds a core, which would measure the
scheduler, not the node.

    python -m benchmarks.bench_node [--model weights.safetensors | --arch student_edge_tiny] [--runs 20] [--threads 1]
        [--dds both|default|large-buffers]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import yaml

from benchmarks.harness import bundled_keyframe, summarize, write_result

MS = 1e3
#: Fast DDS profile for multi-camera JPEG sets: shared memory with a 16 MB segment, UDP with 4 MB socket buffers.
LARGE_BUFFERS = (Path(__file__).resolve().parent.parent / 'config' / 'fastdds_large_buffers.xml').read_text()


def _model(model, arch, tmp: Path) -> Path:
    if model:
        return Path(model)
    import torch

    from mapkd_core.models import build_model, save_weights
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return save_weights(build_model(arch), tmp / f'{arch}_random.safetensors')


def pipeline_only(weights, frame, backend, device, warmup, runs, threads) -> dict:
    """The Pipeline alone on the decoded full-size images, and the node's work without ROS: JPEG bytes decoded at
    reduced size as the node does (:mod:`mapkd_ros.conversions`), then the Pipeline."""
    from types import SimpleNamespace

    import cv2
    import torch

    from mapkd_core.runtime import Pipeline
    from mapkd_ros.conversions import compressed_to_rgb, intrinsics_for, jpeg_reduction
    torch.set_num_threads(threads)
    pipe = Pipeline(weights, backend=backend, device=device)
    images = [cv2.cvtColor(cv2.imread(str(c.path)), cv2.COLOR_BGR2RGB) for c in frame.cameras]
    msgs = [SimpleNamespace(data=c.path.read_bytes(), format='jpeg') for c in frame.cameras]
    model_hw = (pipe.cfg.image.height, pipe.cfg.image.width)

    def decode_and_run():
        decoded = [compressed_to_rgb(m, c.channel, jpeg_reduction((c.height, c.width), model_hw))
                   for m, c in zip(msgs, frame.cameras)]
        ks = [intrinsics_for(c.intrinsic, f) for (_, f), c in zip(decoded, frame.cameras)]
        return pipe([img for img, _ in decoded], ks, frame.cam_to_ego)

    out = {}
    for name, fn in (('pipeline', lambda: pipe(images, frame.intrinsics, frame.cam_to_ego)),
                     ('decode_and_pipeline', decode_and_run)):
        times = []
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            pred = fn()
            if i >= warmup:
                times.append(MS * (time.perf_counter() - t0))
        out[name] = summarize(times)
        out['polylines'] = len(pred.polylines)
    out['image_size'] = list(model_hw)
    return out


def through_node(weights, frame, backend, device, warmup, runs, threads, timeout) -> dict:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, CompressedImage
    from std_msgs.msg import Float64
    from visualization_msgs.msg import MarkerArray

    from mapkd_core.paths import config_path
    from mapkd_ros.conversions import bytes_to_compressed, camera_info_msg, ns_to_stamp, stamp_to_ns

    domain = 90 + os.getpid() % 10
    ns = '/bench_node'
    cams = [c.channel for c in frame.cameras]
    doc = yaml.safe_load(config_path('student.yaml').read_text())
    doc['student_node']['ros__parameters'].update(
        model=str(weights), backend=backend, device=device,
        image_topics=[f'{ns}/{c}/image_rect_compressed' for c in cams],
        camera_info_topics=[f'{ns}/{c}/camera_info' for c in cams])
    tmp = Path(tempfile.mkdtemp())
    params = tmp / 'student.yaml'
    params.write_text(yaml.safe_dump(doc))
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               PYTHONWARNINGS='ignore', OMP_NUM_THREADS=str(threads))
    log = open(tmp / 'node.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'mapkd_ros.student_node', '--ros-args', '--params-file',
                             str(params)], env=env, stdout=log, stderr=subprocess.STDOUT)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = Node('bench_publisher', context=context)
    qos = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
    image_pubs = [node.create_publisher(CompressedImage, f'{ns}/{c}/image_rect_compressed', qos) for c in cams]
    info_pubs = [node.create_publisher(CameraInfo, f'{ns}/{c}/camera_info', qos) for c in cams]
    arrived, processing, latency = {}, [], []
    got = threading.Event()

    def on_markers(msg):
        arrived[stamp_to_ns(msg.markers[0].header.stamp)] = (time.perf_counter(), len(msg.markers) - 1)
        got.set()

    subs = [node.create_subscription(MarkerArray, '/student_node/map_markers', on_markers, qos),
            node.create_subscription(Float64, '/student_node/processing_time_ms',
                                     lambda m: processing.append(m.data), qos),
            node.create_subscription(Float64, '/student_node/pipeline_latency_ms', lambda m: latency.append(m.data),
                                     qos)]
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    data = [c.path.read_bytes() for c in frame.cameras]
    infos = [camera_info_msg(c.intrinsic, (c.height, c.width), frame_id=c.channel) for c in frame.cameras]
    e2e, e2e_processing, e2e_latency, markers = [], [], [], 0
    try:
        end = time.monotonic() + timeout
        while not (all(p.get_subscription_count() for p in image_pubs + info_pubs)
                   and all(s.get_publisher_count() for s in subs)):
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f'the node did not come up; its log: {(tmp / "node.log").read_text()}')
            time.sleep(0.05)
        for pub, info in zip(info_pubs, infos):
            pub.publish(info)
        done = 0
        for _ in range(3 * (warmup + runs)):
            if done == warmup + runs:
                break
            msgs = [bytes_to_compressed(d, 'jpeg', frame_id=c) for d, c in zip(data, cams)]
            stamp = node.get_clock().now().nanoseconds
            for m in msgs:
                m.header.stamp = ns_to_stamp(stamp)
            got.clear()
            n_processing = len(processing)
            for pub, m in zip(image_pubs, msgs):
                pub.publish(m)
            t_last = time.perf_counter()
            deadline = time.monotonic() + 30
            while stamp not in arrived and time.monotonic() < deadline:
                got.wait(0.5)
                got.clear()
            if stamp not in arrived:  # lost while the node's outputs were still being matched: send again
                for pub, info in zip(info_pubs, infos):
                    pub.publish(info)
                continue
            t_recv, markers = arrived[stamp]
            deadline = time.monotonic() + 5
            while (len(processing) == n_processing or len(latency) == n_processing) and time.monotonic() < deadline:
                time.sleep(0.002)
            if done >= warmup:
                e2e.append(MS * (t_recv - t_last))
                if len(processing) > n_processing and len(latency) > n_processing:
                    e2e_processing.append(processing[-1])
                    e2e_latency.append(latency[-1])
            done += 1
            time.sleep(0.05)
        if done < warmup + runs:
            raise RuntimeError(f'only {done} of {warmup + runs} sets came back')
    finally:
        executor.shutdown(timeout_sec=5)
        node.destroy_node()
        rclpy.shutdown(context=context)
        proc.send_signal(2)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return {'end_to_end_ms': summarize(e2e), 'node_processing_ms': summarize(e2e_processing),
            'node_latency_ms': summarize(e2e_latency), 'markers': markers,
            'jpeg_bytes': [len(d) for d in data]}


def _in_fresh_process(fn, profile: str, tmp: Path, threads: int, *args) -> dict:
    """``fn(*args)`` in a spawned process, with ``OMP_NUM_THREADS=threads`` (as the node gets) and the Fast DDS
    ``profile`` ('default' or 'large-buffers') in the environment that it and the node inherit (Fast DDS reads its XML
    profile once per process, and a fresh process keeps the two measurements from sharing any state)."""
    saved = {k: os.environ.get(k) for k in ('FASTDDS_DEFAULT_PROFILES_FILE', 'OMP_NUM_THREADS')}
    os.environ.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)
    os.environ['OMP_NUM_THREADS'] = str(threads)
    if profile == 'large-buffers':
        xml = tmp / 'fastdds_large_buffers.xml'
        xml.write_text(LARGE_BUFFERS)
        os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = str(xml)
    try:
        with multiprocessing.get_context('spawn').Pool(1) as pool:
            return pool.apply(fn, args)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


def run(model=None, arch='student_edge_tiny', backend='torch', device='cpu', runs=20, warmup=3, threads=1,
        dds='both', timeout=180.0) -> dict:
    frame = bundled_keyframe()
    profiles = ('large-buffers', 'default') if dds == 'both' else (dds,)
    with tempfile.TemporaryDirectory() as tmp:
        weights = _model(model, arch, Path(tmp))
        alone = _in_fresh_process(pipeline_only, 'default', Path(tmp), threads, weights, frame, backend, device,
                                  warmup, runs, threads)
        nodes = {p: _in_fresh_process(through_node, p, Path(tmp), threads, weights, frame, backend, device, warmup,
                                      runs, threads, timeout) for p in profiles}
    pipe_ms = alone['pipeline']['median']
    work_ms = alone['decode_and_pipeline']['median']
    payload = {
        'model': str(model) if model else f'{arch} (random weights)', 'backend': backend, 'device': device,
        'frames': 'real keyframe scene-0061, six 1600x900 JPEGs as CompressedImage',
        'transport': 'Fast DDS, loopback, reliable QoS, node in its own process', 'runs': runs, 'warmup': warmup,
        'torch_threads': threads, 'model_image_size': alone['image_size'], 'pipeline_only_ms': alone['pipeline'],
        'decode_and_pipeline_ms': alone['decode_and_pipeline'], 'polylines': alone['polylines'], 'dds': {},
    }
    print(f'pipeline only        {pipe_ms:8.1f} ms (median of {runs}; {alone["polylines"]} polylines; decoded '
          'full-size images in)')
    print(f'decode + pipeline    {work_ms:8.1f} ms (the node\'s work without ROS: JPEG decoded at reduced size)')
    for profile, node in nodes.items():
        e2e_ms = node['end_to_end_ms']['median']
        payload['dds'][profile] = dict(node, overhead_ms=e2e_ms - pipe_ms,
                                       overhead_pct=100.0 * (e2e_ms - pipe_ms) / pipe_ms,
                                       ros_overhead_ms=e2e_ms - work_ms,
                                       ros_overhead_pct=100.0 * (e2e_ms - work_ms) / pipe_ms,
                                       outside_node_ms=e2e_ms - node['node_processing_ms']['median'])
        r = payload['dds'][profile]
        print(f'[DDS {profile}]')
        print(f'  node processing    {node["node_processing_ms"]["median"]:8.1f} ms (decode + pipeline + markers)')
        print(f'  end to end         {e2e_ms:8.1f} ms (last image published -> MarkerArray received; '
              f'p95 {node["end_to_end_ms"]["p95"]:.1f})')
        print(f'  node overhead      {r["overhead_ms"]:8.1f} ms = {r["overhead_pct"]:.1f} % of the pipeline-only time')
        print(f'  ROS overhead       {r["ros_overhead_ms"]:8.1f} ms = {r["ros_overhead_pct"]:.1f} % of it (end to end '
              f'- decode + pipeline; {r["outside_node_ms"]:.1f} ms outside the node\'s processing)')
    name = 'node' if not model and arch == 'student_edge_tiny' else f'node_{Path(str(model or arch)).stem}'
    path = write_result(name, payload)
    print(f'-> {path}')
    return payload


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', help='weights (.safetensors); default: random weights of --arch')
    p.add_argument('--arch', default='student_edge_tiny', help='model built with random weights when no --model')
    p.add_argument('--backend', default='torch')
    p.add_argument('--device', default='cpu')
    p.add_argument('--runs', type=int, default=20)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--threads', type=int, default=1, help='torch intra-op threads, here and in the node')
    p.add_argument('--dds', choices=('both', 'default', 'large-buffers'), default='both',
                   help='Fast DDS transport configuration of the end-to-end runs')
    args = p.parse_args(argv)
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    run(args.model, args.arch, args.backend, args.device, args.runs, args.warmup, args.threads, args.dds)


if __name__ == '__main__':
    main()
