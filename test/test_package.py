"""Packaging: the ament_python layout that `colcon build` and `ros2 run` expect, and layering rules."""
import ast
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_package_xml_is_format3_with_the_runtime_dependencies():
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.tag == 'package' and root.get('format') == '3'
    assert root.findtext('name') == 'mapkd_ros'
    deps = {e.text for e in root.findall('exec_depend')}
    assert {'rclpy', 'sensor_msgs', 'visualization_msgs', 'std_msgs', 'geometry_msgs'} <= deps
    assert {'python3-numba', 'python3-scipy'} <= deps  # the node's vectorizer
    assert root.find('export/build_type').text == 'ament_python'


def test_setup_cfg_has_the_ament_script_dirs():
    text = (ROOT / 'setup.cfg').read_text()
    assert 'script_dir=$base/lib/mapkd_ros' in text and 'install_scripts=$base/lib/mapkd_ros' in text
    assert (ROOT / 'resource' / 'mapkd_ros').is_file()


@pytest.mark.slow
def test_wheel_installs_the_ros_share_layout(tmp_path):
    """Build the wheel (what pip and colcon install) and check the ament index marker, package.xml, config/,
    launch/, the bundled data and the console scripts are in it."""
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w',
                    str(tmp_path), str(ROOT)], check=True, cwd=tmp_path)
    wheel = next(tmp_path.glob('mapkd_ros-*.whl'))
    names = zipfile.ZipFile(wheel).namelist()
    data = [n.split('.data/data/', 1)[1] for n in names if '.data/data/' in n]
    assert 'share/ament_index/resource_index/packages/mapkd_ros' in data
    assert 'share/mapkd_ros/package.xml' in data
    assert 'share/mapkd_ros/config/data/bundled.yaml' in data
    assert any(n.startswith('share/mapkd_ros/assets/nuscenes_tiny/v1.0-mini/') for n in data)
    assert 'share/mapkd_ros/assets/nuscenes_tiny/LICENSE' in data
    assert any(n.startswith('mapkd_core/data/') for n in names) and any(n.startswith('mapkd_ros/') for n in names)
    entry_points = next(n for n in names if n.endswith('entry_points.txt'))
    assert 'mapkd-inspect-data' in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_core_never_imports_ros():
    """mapkd_core is ROS-free: no rclpy / ROS message import anywhere in it."""
    ros = {'rclpy', 'sensor_msgs', 'visualization_msgs', 'std_msgs', 'geometry_msgs', 'builtin_interfaces',
           'tf2_ros', 'launch', 'launch_ros', 'ament_index_python'}
    for path in (ROOT / 'mapkd_core').rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module or '']
            else:
                continue
            bad = [m for m in mods if m.split('.')[0] in ros]
            assert not bad, f'{path.relative_to(ROOT)} imports {bad}'


def test_paths_imports_no_data_module():
    """``mapkd_core.paths`` knows where files are and the cache root, nothing else: importing it (or calling it)
    must never import the data layer, whose synthetic generator a dataroot name can start."""
    code = ('import sys, mapkd_core.paths as p; p.cache_root(); '
            "print([m for m in sys.modules if m.startswith('mapkd_core.data')])")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '[]'
    # no import of the data layer anywhere in the file either, not even a lazy one inside a function
    tree = ast.parse((ROOT / 'mapkd_core' / 'paths.py').read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or '').startswith(('data', 'mapkd_core.data')), ast.dump(node)
            assert node.level == 0 or node.module == 'errors', f'paths imports .{node.module}'
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith('mapkd_core') for a in node.names), ast.dump(node)


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    from mapkd_core.data.synth import cache as synth_cache
    from mapkd_core.paths import cache_root
    monkeypatch.setenv('MAPKD_CACHE', str(tmp_path))
    assert cache_root() == tmp_path and synth_cache.cache_root() == tmp_path
    monkeypatch.delenv('MAPKD_CACHE')
    assert cache_root() == Path.home() / '.cache' / 'mapkd'


def test_no_absolute_paths_or_gpu_ids_in_code():
    for folder in ('mapkd_core', 'mapkd_ros', 'training', 'launch', 'benchmarks'):
        for path in (ROOT / folder).rglob('*.py'):
            text = path.read_text()
            for bad in ('/home/', '/app/', '/work/', '/tmp/', "cuda:0", "cuda:1", "cuda:2", 'strict=False'):
                assert bad not in text, f'{path.relative_to(ROOT)} contains {bad!r}'


def test_bundled_data_keeps_its_readme_and_licence():
    data = ROOT / 'assets' / 'nuscenes_tiny'
    assert (data / 'README.md').is_file() and (data / 'LICENSE').is_file()
    assert 'CC BY-NC-SA' in (data / 'README.md').read_text()
