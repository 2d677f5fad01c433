import logging
import logging.config
from pathlib import Path

from utils.util import read_json

CONFIG_PATH = Path(__file__).resolve().parent / "logger_config.json"
LOG_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


def setup_logging(log_dir: Path | None, verbosity: int = 2) -> None:
    """Configure the console and `<log_dir>/info.log` from logger_config.json.

    With `log_dir=None` only the console is set up (before a run folder exists). `verbosity` 0, 1 or 2
    shows warnings, info or debug messages.
    """
    config = read_json(CONFIG_PATH)
    handlers = config["handlers"]
    for name, handler in list(handlers.items()):
        if "filename" in handler:
            if log_dir is None:
                del handlers[name]
                config["root"]["handlers"].remove(name)
            else:
                handler["filename"] = str(log_dir / handler["filename"])
    config["root"]["level"] = LOG_LEVELS[verbosity]
    logging.config.dictConfig(config)
