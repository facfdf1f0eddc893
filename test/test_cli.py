"""The one error handler of the console scripts (mapkd_core.cli): bad input -> one line on stderr naming the item,
exit code 2, no traceback; --debug / MAPKD_DEBUG=1 -> the traceback; Ctrl-C -> 130; bugs are not hidden."""
import os
import subprocess
import sys

import pytest

from mapkd_core.cli import command, one_line, run_command
from mapkd_core.errors import (CalibrationError, ConfigError, ConfigNotFoundError, MapkdError, OutputExistsError,
                               UsageError, WeightsMismatchError, WeightsNotFoundError)
from mapkd_core.paths import config_path


def _one_error_line(err: str, prog: str) -> str:
    """The single stderr line of a failed script (asserting there is exactly one and no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f'{prog}: error: '), err
    assert 'Traceback' not in err
    return lines[0]


# ------------------------------------------------------------------------------------------------- the handler
def _raiser(exc):
    def main(argv):
        raise exc
    return main


def test_a_mapkd_error_is_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.delenv('MAPKD_DEBUG', raising=False)
    assert run_command('mapkd-x', _raiser(ConfigError('train.lr: must be > 0, got -1')), []) == 2
    captured = capsys.readouterr()
    assert _one_error_line(captured.err, 'mapkd-x') == 'mapkd-x: error: train.lr: must be > 0, got -1'
    assert captured.out == ''


@pytest.mark.parametrize('exc', [FileNotFoundError(2, 'No such file or directory', '/nope/w.safetensors'),
                                 ValueError('bad value /nope/w.safetensors'),
                                 FileExistsError('/nope/w.safetensors exists')])
def test_bad_input_builtins_are_handled_like_mapkd_errors(exc, capsys, monkeypatch):
    monkeypatch.delenv('MAPKD_DEBUG', raising=False)
    assert run_command('mapkd-x', _raiser(exc), []) == 2
    assert '/nope/w.safetensors' in _one_error_line(capsys.readouterr().err, 'mapkd-x')


def test_a_multi_line_message_becomes_one_line(capsys, monkeypatch):
    monkeypatch.delenv('MAPKD_DEBUG', raising=False)
    exc = ConfigError('a.yaml: not valid YAML: while parsing a flow sequence\n  in "a.yaml", line 1\n\nexpected')
    assert run_command('mapkd-x', _raiser(exc), []) == 2
    line = _one_error_line(capsys.readouterr().err, 'mapkd-x')
    assert line == ('mapkd-x: error: a.yaml: not valid YAML: while parsing a flow sequence; in "a.yaml", line 1; '
                    'expected')
    assert one_line(ValueError('')) == 'ValueError'


def test_an_error_class_can_set_its_exit_code(capsys):
    class RunFailed(MapkdError, RuntimeError):
        exit_code = 1
    assert run_command('mapkd-x', _raiser(RunFailed('node did not come up')), []) == 1
    assert 'node did not come up' in _one_error_line(capsys.readouterr().err, 'mapkd-x')


def test_ctrl_c_exits_130_quietly(capsys, monkeypatch):
    monkeypatch.delenv('MAPKD_DEBUG', raising=False)
    assert run_command('mapkd-x', _raiser(KeyboardInterrupt()), []) == 130
    assert capsys.readouterr().err == ''


def test_debug_flag_shows_the_traceback_and_is_not_passed_on(capsys, monkeypatch):
    monkeypatch.delenv('MAPKD_DEBUG', raising=False)
    seen = []

    def main(argv):
        seen.append(list(argv))
        raise WeightsMismatchError('w.safetensors does not fit the student model')
    assert run_command('mapkd-x', main, ['--weights', 'w.safetensors', '--debug']) == 2
    err = capsys.readouterr().err
    assert seen == [['--weights', 'w.safetensors']]
    assert 'Traceback (most recent call last)' in err and 'WeightsMismatchError' in err
    assert 'mapkd-x: error:' not in err


@pytest.mark.parametrize('value, shown', [('1', True), ('yes', True), ('0', False), ('', False)])
def test_mapkd_debug_environment_variable(value, shown, capsys, monkeypatch):
    monkeypatch.setenv('MAPKD_DEBUG', value)
    assert run_command('mapkd-x', _raiser(UsageError('--set needs key=value')), []) == 2
    assert ('Traceback' in capsys.readouterr().err) is shown


def test_a_bug_is_not_hidden():
    with pytest.raises(ZeroDivisionError):
        run_command('mapkd-x', _raiser(ZeroDivisionError('a bug')), [])


def test_the_decorator_returns_main_s_code_and_reads_sys_argv(monkeypatch):
    @command('mapkd-x')
    def main(argv=None):
        """doc"""
        return None if argv == ['--ok'] else len(argv)
    monkeypatch.setattr(sys, 'argv', ['mapkd-x', 'a', 'b', '--debug'])
    assert main() == 2 and main(['--ok']) == 0 and main.__doc__ == 'doc'


def test_error_classes_keep_their_builtin_bases():
    assert issubclass(ConfigNotFoundError, ConfigError) and issubclass(ConfigNotFoundError, FileNotFoundError)
    assert issubclass(WeightsNotFoundError, FileNotFoundError) and issubclass(CalibrationError, ValueError)
    assert issubclass(OutputExistsError, FileExistsError) and issubclass(UsageError, ValueError)
    assert all(c.exit_code == 2 for c in (ConfigError, WeightsNotFoundError, UsageError))


# ------------------------------------------------------------------------------------------ the console scripts
SCRIPTS = [
    ('mapkd-inspect-data', 'mapkd_core.tools.inspect_data'),
    ('mapkd-eval', 'mapkd_core.eval.cli'),
    ('mapkd-train', 'mapkd_core.train.cli'),
    ('mapkd-import', 'mapkd_core.models.import_ref'),
    ('mapkd-bag-convert', 'mapkd_ros.bag.convert'),
    ('mapkd-bag-play', 'mapkd_ros.bag.play'),
    ('mapkd-demo', 'mapkd_ros.demo'),
]


def _main(module: str):
    import importlib
    return importlib.import_module(module).main


@pytest.mark.parametrize('prog, module', SCRIPTS)
def test_help_documents_debug_and_argparse_errors_still_exit_2(prog, module, capsys):
    main = _main(module)
    with pytest.raises(SystemExit) as info:
        main(['--help'])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f'usage: {prog}') and '--debug' in out
    with pytest.raises(SystemExit) as info:
        main(['--no-such-flag'])
    err = capsys.readouterr().err  # argparse's own message: usage, then a missing or unrecognized argument
    assert info.value.code == 2 and err.startswith(f'usage: {prog}') and f'{prog}: error: ' in err


def test_eval_names_a_missing_weights_file(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('MAPKD_DEBUG', raising=False)
    missing = tmp_path / 'nope.safetensors'
    code = _main('mapkd_core.eval.cli')(['--weights', str(missing), '--data', 'data/bundled.yaml',
                                         '--out', str(tmp_path / 'eval'), '--quiet'])
    assert code == 2
    line = _one_error_line(capsys.readouterr().err, 'mapkd-eval')
    assert str(missing) in line and 'weights file not found' in line


def test_eval_names_a_missing_data_config(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('MAPKD_DEBUG', raising=False)
    code = _main('mapkd_core.eval.cli')(['--weights', str(tmp_path / 'w.safetensors'), '--data', 'data/nope.yaml'])
    assert code == 2
    line = _one_error_line(capsys.readouterr().err, 'mapkd-eval')
    assert 'nope.yaml' in line and 'config file not found' in line


def test_train_names_a_broken_config_yaml(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('MAPKD_DEBUG', raising=False)
    broken = tmp_path / 'broken.yaml'
    broken.write_text('stage: student\nepochs: [1, 2\nlr: 0.001\n')
    assert _main('mapkd_core.train.cli')(['--config', str(broken), '--out', str(tmp_path / 'run')]) == 2
    line = _one_error_line(capsys.readouterr().err, 'mapkd-train')
    assert str(broken) in line and 'not valid YAML' in line
    assert not (tmp_path / 'run').exists()


def test_train_names_a_bad_set_and_an_existing_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('MAPKD_DEBUG', raising=False)
    main = _main('mapkd_core.train.cli')
    config = str(config_path('train/student_tiny.yaml'))
    assert main(['--config', config, '--set', 'epochs']) == 2
    assert "--set needs key=value, got 'epochs'" in _one_error_line(capsys.readouterr().err, 'mapkd-train')
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'checkpoint.pt').write_bytes(b'')
    assert main(['--config', config, '--out', str(out), '--no-resume']) == 2
    line = _one_error_line(capsys.readouterr().err, 'mapkd-train')
    assert str(out / 'checkpoint.pt') in line and '--no-resume' in line


def test_inspect_data_names_an_unknown_split(capsys, monkeypatch):
    monkeypatch.delenv('MAPKD_DEBUG', raising=False)
    assert _main('mapkd_core.tools.inspect_data')(['--split', 'no_such_split', '--out', '']) == 2
    assert "'no_such_split'" in _one_error_line(capsys.readouterr().err, 'mapkd-inspect-data')


def test_import_names_a_missing_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('MAPKD_DEBUG', raising=False)
    missing = tmp_path / 'theirs.pt'
    assert _main('mapkd_core.models.import_ref')([str(missing)]) == 2
    line = _one_error_line(capsys.readouterr().err, 'mapkd-import')
    assert str(missing) in line and 'not found' in line


def test_bag_tools_name_the_bad_item(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('MAPKD_DEBUG', raising=False)
    assert _main('mapkd_ros.bag.play')([str(tmp_path / 'no_bag'), '--wait-subscribers', '0']) == 2
    assert str(tmp_path / 'no_bag') in _one_error_line(capsys.readouterr().err, 'mapkd-bag-play')
    assert _main('mapkd_ros.bag.convert')(['--dataroot', 'bundled', '--out', str(tmp_path / 'bag'),
                                           '--channels', 'CAM_NOSE', '--no-progress']) == 2
    assert 'CAM_NOSE' in _one_error_line(capsys.readouterr().err, 'mapkd-bag-convert')
    assert not (tmp_path / 'bag').exists()


def _run(module: str, *args: str, debug_env: str = '') -> subprocess.CompletedProcess:
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', MAPKD_DEBUG=debug_env,
               PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-m', module, *args], env=env, capture_output=True, text=True, timeout=300)


def test_console_script_process_one_line_then_traceback_with_debug(tmp_path):
    """A real process: exit code 2, one stderr line naming the weights file; with --debug the traceback."""
    missing = str(tmp_path / 'nope.safetensors')
    args = ('--weights', missing, '--data', 'data/bundled.yaml', '--out', str(tmp_path / 'eval'), '--quiet')
    r = _run('mapkd_core.eval.cli', *args)
    assert r.returncode == 2, r.stderr
    assert missing in _one_error_line(r.stderr, 'mapkd-eval')
    r = _run('mapkd_core.eval.cli', *args, '--debug')
    assert r.returncode == 2
    assert 'Traceback (most recent call last)' in r.stderr and 'WeightsNotFoundError' in r.stderr
    assert missing in r.stderr


def test_mapkd_debug_in_the_environment_of_a_process(tmp_path):
    broken = tmp_path / 'broken.yaml'
    broken.write_text('epochs: [1, 2\n')
    r = _run('mapkd_core.train.cli', '--config', str(broken), '--out', str(tmp_path / 'run'))
    assert r.returncode == 2 and str(broken) in _one_error_line(r.stderr, 'mapkd-train')
    r = _run('mapkd_core.train.cli', '--config', str(broken), '--out', str(tmp_path / 'run'), debug_env='1')
    assert r.returncode == 2 and 'Traceback (most recent call last)' in r.stderr and 'ConfigError' in r.stderr


def test_bad_input_raises_the_mapkd_error_that_names_it(tmp_path):
    """The errors the handler reports: each a MapkdError subclass (and still the built-in it used to be)."""
    from types import SimpleNamespace

    import numpy as np

    from mapkd_core.geometry import validate_calibration
    from mapkd_core.models.io import read_weights
    from mapkd_core.train.cli import parse_sets
    from mapkd_ros.conversions import MessageError, camera_info_to_k, extrinsic_matrix, image_to_rgb

    with pytest.raises(CalibrationError, match='CAM_FRONT: intrinsic matrix'):
        validate_calibration(np.zeros((3, 3)), np.eye(4), 'CAM_FRONT')
    with pytest.raises(CalibrationError, match='/cam/info: CameraInfo K is all zeros'):
        camera_info_to_k(SimpleNamespace(k=[0.0] * 9, height=0, width=0), '/cam/info')
    with pytest.raises(CalibrationError, match='CAM_BACK: extrinsic rotation quaternion is zero'):
        extrinsic_matrix([0, 0, 1], [0, 0, 0, 0], 'CAM_BACK')
    msg = SimpleNamespace(encoding='yuv422', height=2, width=2, step=4, data=bytes(8))
    with pytest.raises(MessageError, match="/cam/image: unsupported image encoding 'yuv422'"):
        image_to_rgb(msg, '/cam/image')
    assert issubclass(MessageError, MapkdError) and issubclass(MessageError, ValueError)
    with pytest.raises(ConfigNotFoundError, match="no shipped config 'data/nope.yaml'"):
        config_path('data/nope.yaml')
    with pytest.raises(WeightsNotFoundError, match='w.safetensors'):
        read_weights(tmp_path / 'w.safetensors')
    with pytest.raises(UsageError, match='--set needs key=value'):
        parse_sets(['epochs'])
