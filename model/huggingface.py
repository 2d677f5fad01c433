"""Hugging Face transformers text classifiers (BERT, DistilBERT, RoBERTa, ...) and their tokenizers, from a
local folder written by `save_pretrained`: never downloaded. transformers is optional (requirements-hf.txt)
and imported only when one of these is built."""

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from base.base_model import BaseModel
from utils.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger("model")
SAVE_ADVICE = "save a model and its tokenizer there with save_pretrained while online (README: Text classification)"


class HuggingFaceModel(BaseModel):
    """`AutoModelForSequenceClassification` from the folder `path`, with a classification head of
    `num_labels` outputs: a saved head of another size, or none (a body saved with `AutoModel`), is replaced
    by a new, randomly initialized one (one info line lists its weights).

    Input: tokens (B, 2, L) int64, input_ids stacked with attention_mask (TextCsvDataLoader); output: logits
    (B, num_labels), for cross_entropy. The pretrained body's parameters are named `backbone_prefix`.*
    (model.bert.*, model.distilbert.*): the freezing strategies freeze those and train the head.
    """

    def __init__(self, path: str, num_labels: int) -> None:
        super().__init__()
        transformers = import_transformers("arch.type: HuggingFaceModel")
        folder = saved_folder(path, "arch.args.path")
        with quiet_transformers(), one_line("arch.args.path", f"{path} holds no saved transformers model"):
            self.model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
                folder,
                num_labels=num_labels,
                local_files_only=True,
                ignore_mismatched_sizes=True,
                output_loading_info=True,
            )
        new = sorted(info["missing_keys"]) + sorted(name for name, *_ in info["mismatched_keys"])
        if new:
            logger.info("%s: new, randomly initialized weights for %d labels: %s", path, num_labels, ", ".join(new))
        self.backbone_prefix = f"model.{self.model.base_model_prefix}"
        self.path = path
        self.max_tokens = getattr(self.model.config, "max_position_embeddings", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.max_tokens is not None and x.shape[-1] > self.max_tokens:  # else an index error deep inside
            raise ConfigError(
                f"data_loader.args.max_length: {x.shape[-1]} tokens, but the model in {self.path} reads at most "
                f"{self.max_tokens}; set max_length to {self.max_tokens} or less"
            )
        return self.model(input_ids=x[:, 0], attention_mask=x[:, 1]).logits  # (B, num_labels)


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
