from logger.logger import setup_logging
from logger.visualization import NullWriter, TensorboardWriter, make_writer

__all__ = ["NullWriter", "TensorboardWriter", "make_writer", "setup_logging"]
