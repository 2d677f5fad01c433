"""Text classification from a CSV file for a Hugging Face model (the `text` feature: HuggingFaceModel in
model/huggingface.py, the tokenizer read by utils/huggingface.py, transformers from requirements-hf.txt)."""

import torch

from base.base_data_loader import BaseDataLoader, InMemoryTensors
from data_loader.csv_data import class_targets, read_split, rows_of
from utils.errors import DataError
from utils.huggingface import load_tokenizer


class TextCsvDataLoader(BaseDataLoader):
    """Texts and class labels from a CSV file, for a Hugging Face model (HuggingFaceModel).

    The texts are tokenized once, when the loader is built, by the tokenizer saved in the folder `tokenizer`
    (usually the model's folder; never downloaded), padded and truncated to `max_length` tokens. Batches are
    (tokens (B, 2, max_length) int64: input_ids stacked with attention_mask, class indices (B,) int64), one
    tensor to move to the device as for any other loader. Classes, ids and predictions (`inputs`, split
    "predict") work as in CsvDataLoader with task "classification".
    """

    def __init__(
        self,
        csv_path: str,
        text_column: str,
        target_column: str,
        tokenizer: str,
        max_length: int = 128,
        id_column: str | None = None,
        batch_size: int = 16,
        shuffle: bool = True,
        validation_split: float | int = 0.1,
        test_split: float | int = 0.2,
        split_seed: int = 0,
        num_workers: int = 0,
        split: str = "train",
        seed: int = 0,
        inputs: str | None = None,
        preprocessing: dict | None = None,
    ) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:  # [CLS] and [SEP]
            raise DataError(f"data_loader.args.max_length: expected a whole number >= 2, found {max_length!r}")
        tokenize = load_tokenizer(tokenizer)
        if max_length > tokenize.model_max_length:  # longer than the model reads: positions it has no embedding for
            raise DataError(
                f"data_loader.args.max_length: {max_length} tokens, but the tokenizer's model reads at most "
                f"{tokenize.model_max_length}; use {tokenize.model_max_length} or fewer"
            )
        table, preprocessing = read_split(csv_path, split, inputs, preprocessing)
        texts = table.texts(text_column, "text")
        splits = rows_of(table, id_column, split, validation_split, test_split, split_seed)
        self.classes, targets = class_targets(table, target_column, split, preprocessing, id_column)
        encoded = tokenize(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        tokens = torch.stack([encoded["input_ids"], encoded["attention_mask"]], dim=1).long()  # (N, 2, L)
        self.preprocessing = {"classes": self.classes}
        self.ids = table.ids(id_column)
        super().__init__(
            InMemoryTensors(tokens, targets), splits[split], batch_size, shuffle, num_workers, seed, split == "train"
        )

    def sample_id(self, index: int) -> str:
        """The row number in the file (1 = the first row after the header), or the id column's value."""
        return self.ids[index]
