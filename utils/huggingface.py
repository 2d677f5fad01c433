"""Reading a local Hugging Face folder (a model or a tokenizer saved with `save_pretrained`): never downloaded,
read as data (never its own code, never a pickle), transformers' errors as one line, its chatter off. Shared by
HuggingFaceModel and TextCsvDataLoader; transformers is optional (requirements-hf.txt) and imported only when
one of them is built."""

import contextlib
import json
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.errors import ConfigError, first_line

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SAVE_ADVICE = "save a model and its tokenizer there with save_pretrained while online (docs/text.md)"

# Where transformers looks for `auto_map`: classes in the folder's own .py files, which it imports (runs) when
# trusted and, when not told, asks about on stdin ("run the custom code? [y/N]": a `y` runs it).
CODE_KEY = "auto_map"
CODE_FILES = ("config.json", "tokenizer_config.json")


def load_tokenizer(path: str) -> "PreTrainedTokenizerBase":
    """The tokenizer saved in the folder `path` (usually the model's), for TextCsvDataLoader."""
    transformers = import_transformers("data_loader.type: TextCsvDataLoader")
    folder = saved_folder(path, "data_loader.args.tokenizer")
    with quiet_transformers(), one_line("data_loader.args.tokenizer", f"{path} holds no saved tokenizer"):
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
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
    """The folder `path`; anything else is refused, because transformers would look a name up on the Hub. So is
    a folder with code of its own (`auto_map`): a folder is data, and transformers would run that code."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{key}: no folder {path}; {SAVE_ADVICE}")
    for name in CODE_FILES:
        file = folder / name
        if not file.is_file():  # missing: transformers' own error says so; a FIFO would block the read
            continue
        try:
            content = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # unreadable: transformers says so, in one line (one_line)
            continue
        if isinstance(content, dict) and CODE_KEY in content:
            raise ConfigError(
                f"{key}: {file} has the key {CODE_KEY}, which names code in the folder for transformers to run; "
                "refused: a model folder is read as data (save a model whose class is part of transformers)"
            )
    return str(folder)


def unsafe_weights_file(folder: str) -> Path:
    """The weights file in `folder` that torch's weights-only loader refuses, for the error line after
    transformers raised pickle.UnpicklingError (pytorch_model.bin, or one of its shards), else the folder.
    Read weights-only as transformers does: nothing in it is run."""
    import torch

    for file in sorted(Path(folder).glob("pytorch_model*.bin")):
        try:
            torch.load(file, map_location="meta", weights_only=True)
        except pickle.UnpicklingError:
            return file
        except Exception:  # another problem than the one being named
            continue
    return Path(folder)


@contextlib.contextmanager
def one_line(key: str, problem: str) -> Iterator[None]:
    """transformers' errors about a folder's files as one ConfigError line, with the first sentence of its reason."""
    try:
        yield
    except (OSError, ValueError) as e:
        reason = re.split(r"(?<=\S)\. ", first_line(e))[0].rstrip(" :")  # its first sentence
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
