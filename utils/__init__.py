from utils.errors import CheckpointError, ConfigError, DataError, UserError
from utils.util import MetricTracker, read_json, write_json

__all__ = ["CheckpointError", "ConfigError", "DataError", "MetricTracker", "UserError", "read_json", "write_json"]
