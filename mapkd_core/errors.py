"""Exceptions raised by mapkd_core.

Every error names the bad item (the config key, the file, the sample token, the camera) so that a user can fix the
input without reading our code. Each class also derives from the closest built-in exception, so callers that catch
``FileNotFoundError`` or ``ValueError`` keep working.
"""


class MapkdError(Exception):
    """Base class of every error raised on purpose by mapkd."""


class ConfigError(MapkdError, ValueError):
    """A configuration file or value is invalid (unknown key, wrong type, out-of-range value)."""


class DatasetNotFoundError(MapkdError, FileNotFoundError):
    """The dataroot, or the table version inside it, does not exist."""


class MissingSensorFileError(MapkdError, FileNotFoundError):
    """A sensor file (camera image or LiDAR sweep) listed in the tables is missing on disk."""


class CorruptSensorFileError(MapkdError, ValueError):
    """A sensor file exists but cannot be decoded."""


class UnknownMapError(MapkdError, ValueError):
    """A city / map name has no map expansion (or OSM) file."""


class OsmFormatError(MapkdError, ValueError):
    """An OpenStreetMap shapefile lacks what the SD prior needs (e.g. the ``type`` column)."""


class IncompleteSampleError(MapkdError, ValueError):
    """A sample lacks one of the cameras the configuration asks for."""


class SplitError(MapkdError, ValueError):
    """A split name or split file is unknown, or selects no sample."""


class WeightsMismatchError(MapkdError, ValueError):
    """A weights file does not fit the model or cannot be read (missing, unexpected or mis-shaped keys are named)."""


class NotBuiltError(MapkdError, NotImplementedError):
    """A feature that is planned but not built yet (the message says which issue will build it)."""
