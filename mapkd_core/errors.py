"""Exceptions raised by mapkd_core.

Every error names the bad item (the config key, the file, the sample token, the camera) so that a user can fix the
input without reading our code. Each class also derives from the closest built-in exception, so callers that catch
``FileNotFoundError`` or ``ValueError`` keep working.
"""


class MapkdError(Exception):
    """Base class of every error raised on purpose by mapkd."""

    #: the exit code of a console script that stops on this error (``mapkd_core.cli``): 2 = bad input or
    #: configuration, as argparse uses for a bad flag
    exit_code = 2


class ConfigError(MapkdError, ValueError):
    """A configuration file or value is invalid (unknown key, wrong type, out-of-range value)."""


class ConfigNotFoundError(ConfigError, FileNotFoundError):
    """A config file (a path, or a shipped name under ``config/``) or the share folder that holds them is missing."""


class UsageError(MapkdError, ValueError):
    """A command-line option or a function argument has a value that cannot be used (the option is named)."""


class OutputExistsError(MapkdError, FileExistsError):
    """An output file or folder exists already and would be overwritten (the message says how to proceed)."""


class DatasetNotFoundError(MapkdError, FileNotFoundError):
    """The dataroot, or the table version inside it, does not exist."""


class MissingSensorFileError(MapkdError, FileNotFoundError):
    """A sensor file (camera image or LiDAR sweep) listed in the tables is missing on disk."""


class CalibrationError(MapkdError, ValueError):
    """A camera calibration, pose or transform is unusable: zero or non-finite quaternion, mis-shaped or non-finite
    matrix, not a rotation, non-positive focal length (the camera or value is named)."""


class CorruptSensorFileError(MapkdError, ValueError):
    """A sensor file exists but cannot be decoded."""


class ImageFormatError(MapkdError, ValueError):
    """A camera image handed to the runtime has the wrong type, shape or size (the camera is named)."""


class UnknownMapError(MapkdError, ValueError):
    """A city / map name has no map expansion (or OSM) file."""


class OsmFormatError(MapkdError, ValueError):
    """An OpenStreetMap shapefile lacks what the SD prior needs (e.g. the ``type`` column)."""


class IncompleteSampleError(MapkdError, ValueError):
    """A sample lacks one of the cameras the configuration asks for."""


class SplitError(MapkdError, ValueError):
    """A split name or split file is unknown, or selects no sample."""


class WeightsNotFoundError(MapkdError, FileNotFoundError):
    """A weights file or checkpoint named by the user does not exist."""


class WeightsMismatchError(MapkdError, ValueError):
    """A weights file does not fit the model or cannot be read (missing, unexpected or mis-shaped keys are named)."""


class NotBuiltError(MapkdError, NotImplementedError):
    """A feature that is planned but not built yet (the message says which issue will build it)."""
