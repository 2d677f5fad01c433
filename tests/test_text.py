"""The `text` feature: TextCsvDataLoader with HuggingFaceModel (a tiny BERT built here: nothing is downloaded)."""

import io
import json
import random
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import evaluate, shrink, train
from data_loader.text_csv import TextCsvDataLoader
from logger.run_folder import BEST_NAME
from test_csv import column, everything, order, write_csv
from trainer.checkpoint import KEY_DATA, load_checkpoint
from trainer.finetuning import Finetuning
from utils.errors import ConfigError, DataError

WORDS = ["the", "film", "movie", "plot", "acting", "was", "is", "really", "quite", "good", "great", "bad", "awful"]


@pytest.fixture
def tiny_bert(tmp_path, monkeypatch) -> Path:
    """A folder holding a tiny random BERT (2 labels) and its tokenizer, as save_pretrained writes them.
    The hub is offline: anything that tried to download would fail."""
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    folder = tmp_path / "tiny_bert"
    folder.mkdir()
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizerFast(str(vocab)).save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=2,
    )
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def reviews(path: Path, n: int, seed: int = 0) -> Path:
    """Short sentences whose label is the sentiment word in them."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.choice(["negative", "positive"])
        word = rng.choice(["good", "great"] if label == "positive" else ["bad", "awful"])
        subject = rng.choice(["the film", "the movie", "the plot", "the acting"])
        rows.append(
            [f"r{i}", f"{subject} {rng.choice(['was', 'is'])} {rng.choice(['', 'really ', 'quite '])}{word}", label]
        )
    return write_csv(path, ["id", "text", "label"], rows)


def test_text_loader_and_hugging_face_model_fit_together(tmp_path, tiny_bert, caplog):
    from model.huggingface import HuggingFaceModel

    path = reviews(tmp_path / "reviews.csv", 40)
    loader = TextCsvDataLoader(str(path), "text", "label", str(tiny_bert), max_length=12, batch_size=8, id_column="id")
    assert loader.classes == ["negative", "positive"] and loader.preprocessing == {"classes": loader.classes}
    tokens, targets = next(iter(loader))
    assert tokens.shape == (8, 2, 12) and tokens.dtype == torch.int64 and targets.dtype == torch.int64
    first = order(loader)[0]
    text = column(path, "text")[first]
    ids = [2, *(5 + WORDS.index(w) for w in text.split()), 3]  # [CLS] words [SEP], then [PAD]s
    all_tokens, _ = loader.dataset[([first], 0)]
    assert all_tokens[0, 0].tolist() == ids + [0] * (12 - len(ids))
    assert all_tokens[0, 1].tolist() == [1] * len(ids) + [0] * (12 - len(ids))

    with caplog.at_level("INFO", logger="model"):
        model = HuggingFaceModel(str(tiny_bert), num_labels=3)  # another head than the saved one: replaced
    assert "new, randomly initialized weights for 3 labels: classifier.bias, classifier.weight" in caplog.text
    assert model(tokens).shape == (8, 3)
    assert model.backbone_prefix == "model.bert"
    finetuning = Finetuning(strategy="freeze")
    finetuning.freeze(model)  # the prefix the freezing strategies use: only the head trains
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "model.classifier.weight",
        "model.classifier.bias",
    ]


def test_a_pretrained_body_saved_without_a_head_is_loaded_with_a_new_head(tmp_path, tiny_bert, caplog):
    import transformers

    from model.huggingface import HuggingFaceModel

    body = transformers.BertModel(transformers.BertConfig.from_pretrained(tiny_bert))  # as AutoModel saves one
    body.save_pretrained(tmp_path / "body")
    with caplog.at_level("INFO", logger="model"):
        model = HuggingFaceModel(str(tmp_path / "body"), num_labels=4)
    assert "new, randomly initialized weights for 4 labels: classifier.bias, classifier.weight" in caplog.text
    loaded = dict(model.named_parameters())
    for name, weight in body.named_parameters():  # every pretrained weight arrives unchanged
        assert torch.equal(loaded[f"model.bert.{name}"], weight), name
    assert loaded["model.classifier.weight"].shape == (4, 32)


def test_text_predictions_and_preprocessing(tmp_path, tiny_bert):
    path = reviews(tmp_path / "reviews.csv", 20)
    args = dict(csv_path=str(path), text_column="text", target_column="label", tokenizer=str(tiny_bert), max_length=8)
    trained = TextCsvDataLoader(**args)
    saved = json.loads(json.dumps(trained.preprocessing))
    for a, b in zip(
        everything(TextCsvDataLoader(**args, split="test")),
        everything(TextCsvDataLoader(**args, split="test", preprocessing=saved)),
        strict=True,
    ):
        assert torch.equal(a, b)
    new = write_csv(tmp_path / "new.csv", ["text"], [["the film was good"], ["the plot is awful"], ["unknown words"]])
    loader = TextCsvDataLoader(**args, split="predict", inputs=str(new), preprocessing=saved)
    tokens, targets = everything(loader)
    assert tokens.shape == (3, 2, 8) and targets.tolist() == [-1, -1, -1]
    assert tokens[2, 0, :4].tolist() == [2, 1, 1, 3]  # words outside the vocabulary are [UNK]
    assert [loader.sample_id(i) for i in range(3)] == ["1", "2", "3"] and loader.classes == trained.classes


def test_hugging_face_errors_are_one_line(tmp_path, tiny_bert, monkeypatch):
    from model.huggingface import HuggingFaceModel

    path = reviews(tmp_path / "reviews.csv", 10)
    with pytest.raises(ConfigError, match=r"^arch\.args\.path: no folder \S*nowhere; save a model and its tokenizer"):
        HuggingFaceModel(str(tmp_path / "nowhere"), num_labels=2)  # never looked up on the Hub
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    (only_config / "config.json").write_text((tiny_bert / "config.json").read_text())
    with pytest.raises(ConfigError, match=r"^arch\.args\.path: \S*only_config holds no saved transformers model \("):
        HuggingFaceModel(str(only_config), num_labels=2)
    # transformers 4 refuses the folder; 5 loads a tokenizer of special tokens only, which is refused here
    with pytest.raises(ConfigError, match=r"^data_loader\.args\.tokenizer: \S*only_config holds no (saved )?tokenizer"):
        TextCsvDataLoader(str(path), "text", "label", str(only_config))
    with pytest.raises(ConfigError, match=r"^data_loader\.args\.tokenizer: no folder \S*nowhere; save a model"):
        TextCsvDataLoader(str(path), "text", "label", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"reviews\.csv: no text column 'txt'; .*did you mean 'text'\?$"):
        TextCsvDataLoader(str(path), "txt", "label", str(tiny_bert))
    # A tokenizer that knows its model's length refuses a longer max_length before it tokenizes (1e9 would pad
    # every text to a billion tokens).
    bounded = tmp_path / "bounded"
    shutil.copytree(tiny_bert, bounded)
    settings = json.loads((bounded / "tokenizer_config.json").read_text())
    (bounded / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": 64}))
    with pytest.raises(DataError, match=r"^data_loader\.args\.max_length: 1000000000 tokens, but the tokenizer's mo"):
        TextCsvDataLoader(str(path), "text", "label", str(bounded), max_length=10**9)
    model = HuggingFaceModel(str(tiny_bert), num_labels=2)
    long = TextCsvDataLoader(str(path), "text", "label", str(tiny_bert), max_length=100, validation_split=0)
    with pytest.raises(ConfigError, match=r"^data_loader\.args\.max_length: 100 tokens, but the model in \S+ reads"):
        model(next(iter(long))[0])  # 64 positions at most
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"^arch\.type: HuggingFaceModel needs transformers; run pip install -r requ"):
        HuggingFaceModel(str(tiny_bert), num_labels=2)
    with pytest.raises(ConfigError, match=r"^data_loader\.type: TextCsvDataLoader needs transformers; run pip insta"):
        TextCsvDataLoader(str(path), "text", "label", str(tiny_bert))


def test_a_folder_with_code_of_its_own_is_refused_before_anything_is_asked_or_run(
    tmp_path, tiny_bert, monkeypatch, capsys
):
    """transformers would ask "run the custom code? [y/N]" on stdin, and a `y` would import the folder's evil.py."""
    from model.huggingface import HuggingFaceModel

    path = reviews(tmp_path / "reviews.csv", 10)
    custom, marker = tmp_path / "custom", tmp_path / "ran"
    shutil.copytree(tiny_bert, custom)
    (custom / "evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        "from transformers import BertConfig, BertForSequenceClassification\n"
        "class EvilConfig(BertConfig):\n    model_type = 'evil-bert'\n"
        "class EvilModel(BertForSequenceClassification):\n    config_class = EvilConfig\n"
    )
    config = json.loads((custom / "config.json").read_text())
    auto_map = {"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"}
    (custom / "config.json").write_text(json.dumps({**config, "model_type": "evil-bert", "auto_map": auto_map}))
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # what a prompt would take as yes
    refusal = r"\S*custom/config\.json has the key auto_map, which names code in the folder for transformers to run"
    with pytest.raises(ConfigError, match=rf"^arch\.args\.path: {refusal}") as model_error:
        HuggingFaceModel(str(custom), num_labels=2)
    with pytest.raises(ConfigError, match=rf"^data_loader\.args\.tokenizer: {refusal}") as tokenizer_error:
        TextCsvDataLoader(str(path), "text", "label", str(custom))
    assert "\n" not in str(model_error.value) + str(tokenizer_error.value)
    assert sys.stdin.read() == "y\n" and "[y/N]" not in "".join(capsys.readouterr())  # nothing was asked
    assert not marker.exists()  # nothing was run
    # The tokenizer's file: transformers would load its own BertTokenizerFast; refused all the same.
    (custom / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((custom / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    (custom / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with pytest.raises(ConfigError, match=r"^data_loader\.args\.tokenizer: \S*custom/tokenizer_config\.json has the k"):
        TextCsvDataLoader(str(path), "text", "label", str(custom))
    assert not marker.exists()


class Payload:
    """Unpickled, this would create the file `marker`: a weights file must never be able to do that."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_weights_are_refused_as_not_a_safe_weights_file(tmp_path, tiny_bert):
    from model.huggingface import HuggingFaceModel

    pickled, marker = tmp_path / "pickled", tmp_path / "ran"
    shutil.copytree(tiny_bert, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"classifier.weight": Payload(marker)}, pickled / "pytorch_model.bin")
    with pytest.raises(ConfigError) as error:
        HuggingFaceModel(str(pickled), num_labels=2)
    message = str(error.value)
    assert message.startswith(
        f"arch.args.path: {pickled / 'pytorch_model.bin'} is not a safe weights file (safetensors or a weights-only "
        "state dict is)"
    )
    assert "weights_only=False" not in message and "\n" not in message and not marker.exists()


# --- end to end: train.py with the classes selected by name in a config ------------------------------------------


@pytest.mark.e2e
def test_a_tiny_bert_learns_the_sentiment_of_a_text_csv(tmp_path, tiny_bert, base_config):
    import predict as predict_script

    config = shrink(base_config, tmp_path / "saved", epochs=6)
    config.update(
        name="Reviews_TinyBert",
        arch={"type": "HuggingFaceModel", "args": {"path": str(tiny_bert), "num_labels": 2}},
        data_loader={
            "type": "TextCsvDataLoader",
            "args": {
                "csv_path": str(reviews(tmp_path / "reviews.csv", 240)),
                "text_column": "text",
                "target_column": "label",
                "tokenizer": str(tiny_bert),
                "max_length": 8,
                "batch_size": 16,
            },
        },
        optimizer={"type": "AdamW", "args": {"lr": 0.003}},
        loss="cross_entropy",
        metrics=["accuracy"],
        lr_scheduler=None,
    )
    config["trainer"].update(monitor="max val_accuracy", early_stop=0, save_period=100)
    result, run = train(config, tmp_path)
    assert result["best"]["val_accuracy"] >= 0.95
    results = evaluate(run.checkpoint_dir)
    assert results["n_samples"] == 45 and results["accuracy"] >= 0.95
    assert load_checkpoint(run.checkpoint_dir / BEST_NAME).state[KEY_DATA] == {"classes": ["negative", "positive"]}
    new = write_csv(tmp_path / "new.csv", ["text"], [["the acting was awful"], ["the movie is great"], ["bad"]])
    out = tmp_path / "predictions.csv"
    written = predict_script.main(
        *predict_script.parse_args(["-r", str(run.checkpoint_dir), "-i", str(new), "-o", str(out)])
    )
    assert written == 3
    assert column(out, "prediction") == ["negative", "positive", "negative"] and column(out, "id") == ["1", "2", "3"]
