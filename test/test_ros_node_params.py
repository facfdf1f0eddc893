"""The student_node's parameters have one source of truth, config/student_node.schema.yaml: the node declares them
from it (descriptions, ranges, allowed values), config/student.yaml agrees with it, the backend names come from the
runtime's one list, docs/node.md's table is rendered from it, and bad values stop the node with an error naming the
parameter.

config/student.yaml is held to the schema strictly: the same parameter names, and every value EQUAL to the schema's
default (the file is the reference params file, so the defaults in code and the shipped file cannot drift); the
per-camera extrinsics, which have no default, must be valid (types, lengths, a usable rotation).
"""
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'

import rclpy  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from mapkd_core.constants import CAMERAS  # noqa: E402
from mapkd_core.paths import config_path  # noqa: E402
from mapkd_ros import params as schema  # noqa: E402
from mapkd_ros.conversions import extrinsic_matrix  # noqa: E402
from test_ros_node import params_from_yaml  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")]

REPO = Path(__file__).resolve().parent.parent
DOMAIN = 20 + os.getpid() % 70


def flat_yaml(path) -> dict:
    """The flat parameter dict of a params file's node section (the node tests' reader)."""
    assert schema.node_name() == 'student_node'
    return params_from_yaml(path)


class FakePipeline:
    """Stands in for the Pipeline: the node only reads its cameras and input size until a set arrives."""
    cameras = tuple(CAMERAS)
    cfg = types.SimpleNamespace(image=types.SimpleNamespace(height=128, width=352))

    def __call__(self, *args, **kwargs):
        raise AssertionError('not called in these tests')


@pytest.fixture
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN)
    yield ctx
    rclpy.shutdown(context=ctx)


def make_node(context, **changes):
    from mapkd_ros.student_node import StudentNode
    values = flat_yaml(config_path('student.yaml'))
    values.update(changes)
    return StudentNode(pipeline=FakePipeline(), context=context,
                       parameter_overrides=[Parameter(k, value=v) for k, v in values.items() if v is not None])


# ------------------------------------------------------------------------------------------------- the schema
def test_schema_entries_are_complete_and_their_defaults_valid():
    specs = schema.load_schema()
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    # the parameters the node has always had, and the diagnostics thresholds
    assert {'model', 'backend', 'device', 'fp16', 'onnx', 'cameras', 'image_topics', 'camera_info_topics',
            'compressed', 'frame_id', 'slop', 'queue_size', 'qos', 'extrinsics_source', 'line_width', 'stale_timeout',
            'warn_period', 'extrinsics.{camera}.translation', 'extrinsics.{camera}.rotation', 'diagnostics_period',
            'processing_time_warn_ms', 'processing_time_error_ms', 'dropped_sets_warn_per_s'} == set(names)
    for s in specs:
        assert s.description and s.type in schema.TYPES
        assert s.has_default != s.per_camera, s.name  # only the extrinsics have no default
        if s.range is not None:
            assert s.type in ('double', 'integer') and s.range[0] < s.range[1]
            assert s.range[0] <= s.default <= s.range[1]
    d = schema.defaults()
    assert d['cameras'] == list(CAMERAS)
    assert d['image_topics'] == [f'/{c}/image_rect_compressed' for c in CAMERAS]
    assert d['processing_time_warn_ms'] <= d['processing_time_error_ms']


def test_backend_names_come_from_the_one_list_in_the_runtime():
    from mapkd_core.runtime import BACKENDS
    spec = schema.specs_by_name()['backend']
    assert spec.choices_from == 'mapkd_core.constants.BACKENDS'
    assert spec.choices == tuple(BACKENDS) and spec.default in BACKENDS
    # and neither the node nor its launch file keeps a list of its own
    for path in ('mapkd_ros/student_node.py', 'mapkd_ros/params.py'):
        source = (REPO / path).read_text()
        assert not any(name in source for name in BACKENDS if name != 'torch'), path
    import importlib.util
    spec = importlib.util.spec_from_file_location('student_launch', REPO / 'launch' / 'student.launch.py')
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    assert not any(name in text for _, text in launch.OVERRIDES.values() for name in BACKENDS if name != 'torch')


def test_student_yaml_agrees_with_the_schema():
    values = flat_yaml(config_path('student.yaml'))
    specs = schema.load_schema()
    plain = {s.name: s for s in specs if not s.per_camera}
    per_camera = [s for s in specs if s.per_camera]
    expected = set(plain) | {s.for_camera(c) for s in per_camera for c in values['cameras']}
    assert set(values) == expected, (sorted(set(values) - expected), sorted(expected - set(values)))
    for name, spec in plain.items():  # every value is the default, with the schema's type
        assert spec.check(values[name]) == spec.default, name
        assert type(values[name]) is type(spec.default), name
    for cam in values['cameras']:  # the extrinsics: valid types, lengths and rotations
        t = schema.spec_for(f'extrinsics.{cam}.translation').check(values[f'extrinsics.{cam}.translation'])
        q = schema.spec_for(f'extrinsics.{cam}.rotation').check(values[f'extrinsics.{cam}.rotation'])
        assert extrinsic_matrix(t, q, cam).shape == (4, 4)


def test_spec_check_names_the_parameter_and_what_is_allowed():
    specs = schema.specs_by_name()
    cases = [('slop', 5.0, 'parameter slop must be a number with a decimal point (e.g. 1.0) in [0.0, 1.0] s, got 5.0'),
             ('slop', 1, 'parameter slop must be a number with a decimal point'),
             ('queue_size', 0, 'parameter queue_size must be an integer in [1, 100], got 0'),
             ('queue_size', True, 'parameter queue_size must be an integer'),
             ('backend', 'tflite', "parameter backend must be 'torch', 'onnxruntime' or 'tensorrt', got 'tflite'"),
             ('device', 'gpu', "parameter device must be cpu, cuda or cuda:N, got 'gpu'"),
             ('qos', 'fast', "parameter qos must be 'reliable' or 'sensor_data', got 'fast'"),
             ('image_topics', ['/a', 3], 'parameter image_topics must be a list of strings'),
             ('line_width', float('nan'), 'parameter line_width must be')]
    for name, value, message in cases:
        with pytest.raises(schema.ConfigurationError, match=message.replace('(', r'\(').replace(')', r'\)')
                           .replace('[', r'\[').replace(']', r'\]').replace('.', r'\.')):
            specs[name].check(value)
    rotation = schema.spec_for('extrinsics.CAM_BACK.rotation')
    assert rotation is specs['extrinsics.{camera}.rotation']
    with pytest.raises(schema.ConfigurationError, match='parameter extrinsics.CAM_BACK.rotation must be a list of 4 '
                                                        r'numbers, got \[1.0, 0.0\]'):
        rotation.check([1.0, 0.0], 'extrinsics.CAM_BACK.rotation')
    assert specs['device'].check('cuda:1') == 'cuda:1' and specs['slop'].check(0.0) == 0.0
    assert schema.spec_for('nonexistent') is None


# ------------------------------------------------------------------------------------------------ the node
def test_node_declares_every_parameter_from_the_schema(context):
    node = make_node(context)
    try:
        for spec in schema.load_schema():
            names = [spec.for_camera(c) for c in CAMERAS] if spec.per_camera else [spec.name]
            for name in names:
                assert node.has_parameter(name), name
                d = node.describe_parameter(name)
                assert d.description.startswith(spec.description), name
                assert d.read_only  # read once at start-up: a later change would have no effect
                if spec.range is not None and spec.type == 'double':
                    (r,) = d.floating_point_range
                    assert (r.from_value, r.to_value) == spec.range
                elif spec.range is not None:
                    (r,) = d.integer_range
                    assert (r.from_value, r.to_value) == spec.range
                else:
                    assert not d.floating_point_range and not d.integer_range
                if spec.choices is not None:
                    assert d.additional_constraints == 'one of: ' + ', '.join(spec.choices)
        assert node.get_parameter('processing_time_warn_ms').value == schema.defaults()['processing_time_warn_ms']
        assert node._diagnostics_timer.timer_period_ns == int(schema.defaults()['diagnostics_period'] * 1e9)
    finally:
        node.destroy_node()


def test_node_defaults_are_the_schema_defaults_when_nothing_is_given(context):
    """No params file at all, only the extrinsics the node cannot do without: every value is the schema default."""
    from mapkd_ros.student_node import StudentNode
    extrinsics = {k: v for k, v in flat_yaml(config_path('student.yaml')).items() if k.startswith('extrinsics.')}
    node = StudentNode(pipeline=FakePipeline(), context=context,
                       parameter_overrides=[Parameter(k, value=v) for k, v in extrinsics.items()])
    try:
        for name, default in schema.defaults().items():
            assert node.get_parameter(name).value == default, name
    finally:
        node.destroy_node()


@pytest.mark.parametrize('change, message', [
    ({'slop': 5.0}, r'parameter slop must be a number with a decimal point \(e.g. 1.0\) in \[0.0, 1.0\] s, got 5.0'),
    ({'stale_timeout': 2}, r'parameter stale_timeout must be a number with a decimal point \(e.g. 1.0\) .*, got 2$'),
    ({'queue_size': 0}, r'parameter queue_size must be an integer in \[1, 100\], got 0'),
    ({'line_width': 0.0}, r'parameter line_width must be .* in \[0.001, 10.0\] m, got 0.0'),
    ({'backend': 'tflite'}, r"parameter backend must be 'torch', .* or '\w+', got 'tflite'"),
    ({'device': 'gpu'}, "parameter device must be cpu, cuda or cuda:N, got 'gpu'"),
    ({'extrinsics_source': 'urdf'}, "parameter extrinsics_source must be 'parameters' or 'tf', got 'urdf'"),
    ({'fp16': 'yes'}, "parameter fp16 must be true or false, got 'yes'"),
    ({'processing_time_warn_ms': 900.0, 'processing_time_error_ms': 800.0},
     r'parameter processing_time_error_ms \(800\) must be at least processing_time_warn_ms \(900\)'),
    ({'extrinsics.CAM_BACK.translation': [1.0, 2.0]},
     r'parameter extrinsics.CAM_BACK.translation must be a list of 3 numbers, got \[1.0, 2.0\]'),
    ({'extrinsics.CAM_BACK.rotation': 'identity'},
     "parameter extrinsics.CAM_BACK.rotation must be a list of 4 numbers, got 'identity'"),
])
def test_bad_values_stop_the_node_with_an_error_naming_the_parameter(context, change, message):
    from mapkd_ros.student_node import ConfigurationError
    with pytest.raises(ConfigurationError, match=message):
        make_node(context, **change)


def test_configuration_error_is_a_mapkd_config_error():
    from mapkd_core.errors import ConfigError, MapkdError
    from mapkd_ros.student_node import ConfigurationError
    assert issubclass(ConfigurationError, ConfigError) and issubclass(ConfigurationError, MapkdError)
    assert issubclass(ConfigurationError, ValueError)


# -------------------------------------------------------------------------------------------------- the docs
def test_docs_parameter_table_is_the_rendered_schema():
    doc = (REPO / 'docs' / 'node.md').read_text()
    table = schema.table_in(doc)
    assert table == schema.render_markdown(), 'run: python -m mapkd_ros.params --write docs/node.md'
    lines = table.splitlines()
    assert len(lines) == 2 + len(schema.load_schema())
    for spec in schema.load_schema():
        assert any(line.startswith(f'| `{spec.name.replace("{camera}", "<camera>")}` |') for line in lines)
    # the table names the allowed backends from the code
    from mapkd_core.runtime import BACKENDS
    (backend_row,) = [line for line in lines if line.startswith('| `backend` |')]
    assert all(f'`{b}`' in backend_row for b in BACKENDS)


def test_params_cli_prints_and_writes_the_table(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    out = subprocess.run([sys.executable, '-m', 'mapkd_ros.params', '--markdown'], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip('\n') == schema.render_markdown()
    doc = tmp_path / 'node.md'
    doc.write_text(f'# x\n\n{schema.TABLE_BEGIN}\n| old |\n{schema.TABLE_END}\n\nafter\n')
    done = subprocess.run([sys.executable, '-m', 'mapkd_ros.params', '--write', str(doc)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    text = doc.read_text()
    assert schema.table_in(text) == schema.render_markdown() and '| old |' not in text
    assert text.startswith('# x\n') and text.endswith('\n\nafter\n')
    (tmp_path / 'plain.md').write_text('no markers\n')
    bad = subprocess.run([sys.executable, '-m', 'mapkd_ros.params', '--write', str(tmp_path / 'plain.md')],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and 'no parameter table markers' in bad.stderr and 'Traceback' not in bad.stderr


def test_diagnostic_msgs_is_a_declared_dependency():
    import xml.etree.ElementTree as ET
    deps = {e.text for e in ET.parse(REPO / 'package.xml').getroot() if e.tag.endswith('depend')}
    assert 'diagnostic_msgs' in deps
    pins = (REPO / 'requirements.txt').read_text().splitlines()
    assert 'ros-diagnostic-msgs==5.5.1' in pins
