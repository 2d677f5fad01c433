"""Hugging Face transformers text classifiers (BERT, DistilBERT, RoBERTa, ...), from a local folder written by
`save_pretrained`: never downloaded. transformers is optional (requirements-hf.txt) and imported only when one
is built (utils/huggingface.py reads the folder; the tokenizer is the data loader's)."""

import logging
import pickle

import torch

from base.base_model import BaseModel
from utils.errors import ConfigError
from utils.huggingface import import_transformers, one_line, quiet_transformers, saved_folder, unsafe_weights_file

logger = logging.getLogger("model")


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
        try:
            with quiet_transformers(), one_line("arch.args.path", f"{path} holds no saved transformers model"):
                self.model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
                    folder,
                    num_labels=num_labels,
                    local_files_only=True,
                    trust_remote_code=False,
                    ignore_mismatched_sizes=True,
                    output_loading_info=True,
                )
        except pickle.UnpicklingError:  # torch's own message advises weights_only=False: running the pickle
            raise ConfigError(
                f"arch.args.path: {unsafe_weights_file(folder)} is not a safe weights file (safetensors or a "
                "weights-only state dict is): it holds other pickled objects, which are never loaded; save the "
                "model again with save_pretrained"
            ) from None
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
