"""Reading a local Hugging Face folder (a model or a tokenizer saved with `save_pretrained`): never downloaded,
transformers' errors as one line, its chatter off. Shared by HuggingFaceModel and TextCsvDataLoader;
transformers is optional (requirements-hf.txt) and imported only when one of them is built."""

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SAVE_ADVICE = "save a model and its tokenizer there with save_pretrained while online (README: Text classification)"


def load_tokenizer(path: str) -> "PreTrainedTokenizerBase":
    """The tokenizer saved in the folder `path` (usually the model's), for TextCsvDataLoader."""
    transformers = import_transformers("data_loader.type: TextCsvDataLoader")
    folder = saved_folder(path, "data_loader.args.tokenizer")
    with quiet_transformers(), one_line("data_loader.args.tokenizer", f"{path} holds no saved tokenizer"):
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    # A folder with a model's config.json but no tokenizer files loads as a tokenizer that knows only its
    # special tokens, and would turn every word into [UNK].
    if len(tokenizer) <= len(tokenizer.all_special_ids):
        raise ConfigError(f"data_loader.args.tokenizer: {path} holds no tokenizer vocabulary; {SAVE_ADVICE}")
    if tokenizer.pad_token is None:
        raise ConfigError(
            f"data_loader.args.tokenizer: the tokenizer in {path} has no padding token; set one "
            "(tokenizer.pad_token = tokenizer.eos_token) and save it again"
        )
    return tokenizer


def import_transformers(what: str) -> Any:
    """The transformers module; one line saying how to install it where it is missing."""
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"{what} needs transformers; run pip install -r requirements-hf.txt") from None
    return transformers


def saved_folder(path: str, key: str) -> str:
    """The folder `path`; anything else is refused, because transformers would look a name up on the Hub."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{key}: no folder {path}; {SAVE_ADVICE}")
    return str(folder)


@contextlib.contextmanager
def one_line(key: str, problem: str) -> Iterator[None]:
    """transformers' errors about a folder's files as one ConfigError line, with the first sentence of its reason."""
    try:
        yield
    except (OSError, ValueError) as e:
        text = str(e).strip()
        reason = re.split(r"(?<=\S)\. ", text.splitlines()[0])[0].rstrip(" :") if text else type(e).__name__
        raise ConfigError(f"{key}: {problem} ({reason}); {SAVE_ADVICE}") from None


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings, load report and progress bars off for the block, restored after it: a new
    head is expected here, and HuggingFaceModel's info line says which weights are new."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
