"""ConfigParser: loading, overrides, schema errors, names by role, constructor signatures."""

import inspect
import json
import re
from pathlib import Path

import pytest

from conftest import ROOT, template_only
from data_loader.data_loaders import DigitsDataLoader
from logger.run_folder import check_run_id, create_run_folder
from parse_config import ConfigParser, apply_override, parse_value, validate
from roles import ROLES, valid_names
from trainer.base_trainer import BaseTrainer
from trainer.trainer import Trainer
from utils.errors import ConfigError
from utils.util import read_json

SHIPPED_CONFIGS = sorted(ROOT.glob("config*.json"))


def errors_of(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate(config)
    return str(info.value)


def test_every_shipped_config_validates():
    # Each shipped config is there (a user's own configs beside them are validated too, never refused).
    shipped = {"config.json", "config_mnist.json", "config_tabular.json", "config_binary.json"}
    assert shipped <= {p.name for p in SHIPPED_CONFIGS}
    for path in SHIPPED_CONFIGS:
        ConfigParser.load(path)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("0.01", 0.01),
        ("true", True),
        ("null", None),
        ("[1, 2]", [1, 2]),
        ('"3"', "3"),
        ("max val_accuracy", "max val_accuracy"),
        ("saved/", "saved/"),
        ("1e-3", 0.001),
    ],
)
def test_override_values_are_json_where_they_parse(text, value):
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_overrides_set_nested_keys_list_items_and_new_args(base_config):
    for override in (
        "trainer.epochs=3",
        "optimizer.args.lr=0.01",
        "trainer.monitor=max val_accuracy",
        "optimizer.args.betas=[0.8, 0.9]",
        "metrics.1.args.k=5",
        "arch.args.dropout=0.5",
    ):
        apply_override(base_config, override)
    assert base_config["trainer"]["epochs"] == 3
    assert base_config["optimizer"]["args"] == {"lr": 0.01, "weight_decay": 0, "amsgrad": True, "betas": [0.8, 0.9]}
    assert base_config["trainer"]["monitor"] == "max val_accuracy"
    assert base_config["metrics"][1]["args"]["k"] == 5
    validate(base_config)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.epoch=3", "no key trainer.epoch; did you mean 'epochs'? (keys there: epochs, save_period"),
        ("trainer", "expected key=value, e.g. trainer.epochs=3"),
        ("=3", "expected key=value"),
        ("trainer.epochs.x=1", "trainer.epochs is 20, it has no key 'x'"),
        ("metrics.7.args.k=1", "metrics.7 is not an index of that list (0..1)"),
        ("optimizer.lr=0.1", "no key optimizer.lr"),
    ],
)
def test_bad_overrides_name_the_key(base_config, override, message):
    with pytest.raises(ConfigError, match=r"^override") as info:
        apply_override(base_config, override)
    assert message in str(info.value)


def test_load_applies_overrides_and_validates(write_config, tiny_config):
    path = write_config(tiny_config)
    config = ConfigParser.load(path, overrides=["trainer.epochs=5", "data_loader.args.batch_size=16"])
    assert config["trainer"]["epochs"] == 5 and config["data_loader"]["args"]["batch_size"] == 16
    with pytest.raises(ConfigError, match=r'trainer\.epochs: expected integer, found "five"'):
        ConfigParser.load(path, overrides=["trainer.epochs=five"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop("arch"), "arch: missing required key"),
        (lambda c: c["trainer"].pop("epochs"), "trainer.epochs: missing required key"),
        (lambda c: c["trainer"].update(epochs="3"), 'trainer.epochs: expected integer, found "3"'),
        (lambda c: c["trainer"].update(epochs=-1), "trainer.epochs: expected a number >= 1, found -1"),
        (lambda c: c["trainer"].update(early_stop=-2), "trainer.early_stop: expected a number >= 0, found -2"),
        (lambda c: c.update(metrics="accuracy"), 'metrics: expected array, found "accuracy"'),
        (
            lambda c: c["trainer"].update(monitor="maximum val_loss"),
            'trainer.monitor: expected "off", or "min <metric>"',
        ),
        (
            lambda c: c["trainer"].update(amp="fp8"),
            'trainer.amp: expected one of false, true, "fp16", "bf16", "auto"; found "fp8"',
        ),
        (lambda c: c["trainer"].update(epocs=3), "trainer.epocs: unknown key; did you mean 'epochs'?"),
        (lambda c: c.update(optimiser=c["optimizer"]), "optimiser: unknown key; did you mean 'optimizer'?"),
        (lambda c: c["arch"].update(arguments={}), "arch.arguments: unknown key; did you mean 'args'?"),
        (lambda c: c["arch"].update(args=[1]), "arch.args: expected object, found [1]"),
        (lambda c: c.update(name="../escape"), "name: expected a single folder name"),
        (lambda c: c.update(name=".hidden"), "name: expected a single folder name"),
        (lambda c: c.update(verbosity=5), "verbosity: expected one of 0, 1, 2; found 5"),
        (
            lambda c: c.update(finetune={"strategy": "freeze_unfreze"}),
            'unfreeze_milestones"; found "freeze_unfreze"; did you mean \'freeze_unfreeze\'?',
        ),
    ],
)
def test_schema_errors_name_key_expected_and_found(base_config, change, message):
    change(base_config)
    assert message in errors_of(base_config)


def test_all_errors_are_reported_at_once(base_config):
    base_config["trainer"]["epochs"] = 0
    base_config["trainer"]["save_period"] = "often"
    base_config["seeed"] = 1
    text = errors_of(base_config)
    assert (
        "trainer.epochs" in text and "trainer.save_period" in text and "seeed: unknown key; did you mean 'seed'" in text
    )
    assert "\n" not in text  # one line


def test_a_config_that_is_not_an_object_is_refused(write_config, tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object at the top, found \\[1, 2\\]"):
        ConfigParser.load(path)
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "x",}')
    with pytest.raises(ConfigError, match=r"broken\.json: not valid JSON \(.* at line 1, column 14\)"):
        ConfigParser.load(broken)
    with pytest.raises(ConfigError, match=r"missing\.json: file not found"):
        ConfigParser.load(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("role", "value", "valid"),
    [
        ("arch", "MnistNet", "did you mean 'MnistModel'? (valid: "),
        ("data_loader", "DigitLoader", "did you mean 'DigitsDataLoader'? (valid: "),
        ("optimizer", "Adamw", "did you mean 'AdamW'?"),
        ("lr_scheduler", "Steplr", "did you mean 'StepLR'?"),
    ],
)
def test_unknown_class_names_list_the_valid_ones(base_config, role, value, valid):
    base_config[role]["type"] = value
    text = errors_of(base_config)
    assert f"{role}.type: unknown {role} '{value}'" in text and valid in text


def test_a_loss_class_written_in_model_loss_is_a_loss_and_no_model(monkeypatch):
    import torch

    import model.loss
    from roles import ROLES, valid_names

    focal = type("FocalLoss", (torch.nn.Module,), {"__module__": "model.loss"})
    monkeypatch.setattr(model.loss, "FocalLoss", focal, raising=False)
    assert valid_names(ROLES["loss"])["FocalLoss"] is focal
    assert "FocalLoss" not in valid_names(ROLES["arch"])  # it used to be offered, and failed: no parameters


def test_unknown_function_names_list_the_valid_ones(base_config):
    base_config["loss"] = "nll"
    base_config["metrics"][0] = "acuracy"
    text = errors_of(base_config)
    assert "loss: unknown loss 'nll'" in text
    assert re.search(r"valid: [^)]*cross_entropy, [^)]*nll_loss", text)
    assert "metrics.0: unknown metrics 'acuracy'; did you mean 'accuracy'?" in text


@pytest.mark.parametrize(
    "name",
    [
        "__import__",
        "os",
        "eval",
        "system",
        "torch",
        "nn",
        "F",
        "BaseModel",
        "_private",
        "model.model.DigitsModel",
        "Module",
    ],
)
def test_names_cannot_reach_outside_their_role(base_config, name):
    base_config["arch"]["type"] = name
    assert re.search(r"valid: [^)]*DigitsModel, [^)]*MnistModel[^)]*; from model/\*\.py\)", errors_of(base_config))


PARTS = {
    "__init__.py": "",
    "resnet.py": "from torch import nn\n\nclass MyResNet(nn.Module):\n    pass\n",
    "loss.py": "import os\nimport torch.nn.functional as F\nfrom os import system\nfrom torch import load\n"
    "from torch.nn import MSELoss\nfrom torch.nn.functional import l1_loss, relu\n\nmse = F.mse_loss\n\n"
    "def my_loss(output, target):\n    return (output - target).abs().mean()\n",
    "model.py": "from torch import nn\nfrom mypkg.resnet import MyResNet\n\nModule = nn.Module\n",
}


def test_names_resolve_where_users_put_them_and_nothing_else(tmp_path, monkeypatch):
    from roles import Role, loss, loss_function, subclass_of

    (tmp_path / "mypkg").mkdir()
    for name, text in PARTS.items():
        (tmp_path / "mypkg" / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    arch = Role("mypkg.model", subclass_of("torch.nn:Module"))
    assert set(valid_names(arch)) == {"MyResNet"}  # defined in another file of the package, imported here
    losses = valid_names(
        Role(
            "mypkg.loss",
            loss,
            (("torch.nn", subclass_of("torch.nn.modules.loss:_Loss")), ("torch.nn.functional", loss_function)),
        )
    )
    assert {"my_loss", "mse", "l1_loss", "MSELoss", "CrossEntropyLoss", "BCEWithLogitsLoss", "nll_loss"} <= set(losses)
    assert not {"os", "system", "load", "relu", "F", "eval", "softmax"} & set(losses)


@pytest.mark.parametrize(
    ("loss", "output", "target", "expected"),
    [
        ({"type": "MSELoss"}, [[1.0], [3.0]], [[0.0], [0.0]], 5.0),
        ({"type": "MSELoss", "args": {"reduction": "sum"}}, [[1.0], [3.0]], [[0.0], [0.0]], 10.0),
        ("mse_loss", [[1.0], [3.0]], [[0.0], [0.0]], 5.0),
        ({"type": "l1_loss", "args": {"reduction": "sum"}}, [[1.0], [-3.0]], [[0.0], [0.0]], 4.0),
        ({"type": "BCEWithLogitsLoss"}, [[0.0], [0.0]], [[1.0], [0.0]], 0.6931471805599453),
    ],
)
def test_torch_losses_by_name_with_their_arguments(base_config, loss, output, target, expected):
    import torch

    base_config["loss"] = loss
    criterion = ConfigParser(base_config).init_ftn("loss")
    assert criterion(torch.tensor(output), torch.tensor(target)).item() == pytest.approx(expected)


@pytest.mark.parametrize("name", ["relu", "load", "system", "eval", "_Loss", "Module", "functional"])
def test_losses_cannot_reach_outside_their_role(base_config, name):
    base_config["loss"] = name
    assert f"loss: unknown loss '{name}'" in errors_of(base_config)


def test_the_shipped_names_resolve_in_their_roles():
    assert {"DigitsModel", "MnistModel"} <= set(valid_names(ROLES["arch"]))
    assert {"nll_loss", "cross_entropy"} <= set(valid_names(ROLES["loss"]))
    assert {"accuracy", "top_k_acc"} <= set(valid_names(ROLES["metrics"]))
    optimizers = valid_names(ROLES["optimizer"])
    assert {"Adam", "AdamW", "SGD"} <= set(optimizers) and "Optimizer" not in optimizers
    assert {"StepLR", "OneCycleLR", "ReduceLROnPlateau"} <= set(valid_names(ROLES["lr_scheduler"]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["optimizer"]["args"].update(lrr=0.1),
            "optimizer.args.lrr: Adam has no argument 'lrr'; did you mean 'lr'?",
        ),
        (lambda c: c["arch"]["args"].update(classes=3), "arch.args.classes: DigitsModel has no argument 'classes'"),
        (
            lambda c: c["data_loader"]["args"].update(split="test"),
            "data_loader.args.split: set by the code, not the config",
        ),
        (
            lambda c: c["lr_scheduler"]["args"].pop("step_size"),
            "lr_scheduler.args.step_size: StepLR needs this argument",
        ),
        (lambda c: c["metrics"][1]["args"].update(j=2), "metrics.1.args.j: top_k_acc has no argument 'j'"),
        (lambda c: c["optimizer"]["args"].update(params=[]), "optimizer.args.params: set by the code"),
    ],
)
def test_constructor_arguments_are_checked_against_the_signature(base_config, change, message):
    change(base_config)
    assert message in errors_of(base_config)


def test_monitor_must_name_a_logged_metric(base_config):
    base_config["trainer"]["monitor"] = "max val_acc"
    assert "trainer.monitor: no metric 'val_acc'" in errors_of(base_config)
    base_config["trainer"]["monitor"] = "max val_top_k_acc"
    validate(base_config)


def test_duplicate_metric_labels_are_refused_and_name_resolves_them(base_config):
    base_config["metrics"].append({"type": "top_k_acc", "args": {"k": 5}})
    assert "metrics: 'top_k_acc' appears twice" in errors_of(base_config)
    base_config["metrics"][-1]["name"] = "top5"
    validate(base_config)


def test_reduce_lr_on_plateau_needs_a_matching_monitor(base_config):
    base_config["lr_scheduler"] = {"type": "ReduceLROnPlateau", "args": {"mode": "max"}}
    assert "lr_scheduler.args.mode: 'max' disagrees with trainer.monitor 'min val_loss'" in errors_of(base_config)
    base_config["lr_scheduler"]["args"]["mode"] = "min"
    base_config["trainer"]["scheduler_interval"] = "step"
    assert errors_of(base_config) == (
        'trainer.scheduler_interval: ReduceLROnPlateau steps once an epoch, on the monitored metric; set it "epoch"'
    )
    base_config["trainer"]["monitor"] = "off"
    assert "ReduceLROnPlateau steps on the monitored metric" in errors_of(base_config)


def test_schema_trainer_keys_are_exactly_the_trainer_options_and_defaults_come_from_them(base_config):
    import dataclasses

    from trainer.options import TrainerOptions

    schema = read_json(ROOT / "utils" / "config_schema.json")
    keys = schema["properties"]["trainer"]["properties"]
    fields = {f.name: f for f in dataclasses.fields(TrainerOptions)}
    assert set(keys) == set(fields)
    assert not [name for name, spec in keys.items() if "default" in spec]  # one home per default: TrainerOptions
    structural = {"config", "device", "data_loader", "valid_data_loader", "callbacks", "finetuning", "options"}
    parameters = {**inspect.signature(BaseTrainer).parameters, **inspect.signature(Trainer).parameters}
    assert {name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY} == structural  # the options: one
    base_config["trainer"] = {"epochs": 3}
    filled = ConfigParser(base_config)["trainer"]
    assert filled == {"epochs": 3, **{name: f.default for name, f in fields.items() if name != "epochs"}}
    assert filled["monitor"] == "off" and filled["save_period"] == 1


def test_validation_writes_nothing(tiny_config, write_config, tmp_path):
    path = write_config(tiny_config)
    before = sorted(tmp_path.rglob("*"))
    ConfigParser.load(path, overrides=["trainer.epochs=4"])
    assert sorted(tmp_path.rglob("*")) == before


def test_run_folders_are_unique(tiny_config, write_config):
    config = ConfigParser.load(write_config(tiny_config)).config
    first, second = create_run_folder(config), create_run_folder(config)
    assert second.run_id != first.run_id  # two runs in the same second: <time> and <time>_1
    assert first.checkpoint_dir == Path(tiny_config["save_dir"]) / "models" / "Digits_CNN" / first.run_id
    assert first.log_dir == Path(tiny_config["save_dir"]) / "log" / "Digits_CNN" / first.run_id
    create_run_folder(config, "mine")
    with pytest.raises(ConfigError, match=r"--run-id mine: .* already exists"):
        check_run_id(config, "mine")
    with pytest.raises(ConfigError, match=r"--run-id mine: .* already exists"):
        create_run_folder(config, "mine")
    logs = Path(tiny_config["save_dir"]) / "log" / "Digits_CNN" / "logs_only"  # its checkpoints' folder is gone
    logs.mkdir(parents=True)
    with pytest.raises(ConfigError, match=f"^--run-id logs_only: {logs} already exists; choose another id, or remove"):
        check_run_id(config, "logs_only")
    for bad in ("../up", "ok\n", ".hidden", ""):
        with pytest.raises(ConfigError, match="expected a single folder name"):
            check_run_id(config, bad)


@template_only
def test_readme_documents_every_config_key():
    schema = read_json(ROOT / "utils" / "config_schema.json")
    keys = [k for k in schema["properties"] if k != "trainer"] + ["trainer"]
    keys += [f"trainer.{k}" for k in schema["properties"]["trainer"]["properties"]]
    readme = (ROOT / "README.md").read_text()
    reference = readme.split("## Config reference", 1)[1].split("\n## ", 1)[0]  # the reference table's section
    documented = set(re.findall(r"^\| `([\w.]+)` \|", reference, flags=re.MULTILINE))
    assert set(keys) - {"trainer"} <= documented
    loader_args = {"data_dir", "download", "pin_memory", "persistent_workers", "dataset"}
    assert documented - set(keys) <= set(inspect.signature(DigitsDataLoader).parameters) | loader_args


def test_a_config_extends_another_with_only_the_keys_that_differ(tmp_path, base_config):
    (tmp_path / "configs").mkdir()
    (tmp_path / "base.json").write_text(json.dumps(base_config))
    child = {
        "extends": "../base.json",
        "name": "Wider",
        "arch": {"args": {"channels": 64}},
        "optimizer": {"type": "SGD", "args": {"lr": 0.1}},
        "trainer": {"epochs": 3},
    }
    (tmp_path / "configs" / "wider.json").write_text(json.dumps(child))
    config = ConfigParser.load(tmp_path / "configs" / "wider.json").config
    assert config["name"] == "Wider" and "extends" not in config
    assert config["arch"] == {"type": "DigitsModel", "args": {"num_classes": 10, "channels": 64, "dropout": 0.25}}
    assert config["optimizer"] == {"type": "SGD", "args": {"lr": 0.1}}  # another type: its args replace the base's
    assert config["trainer"]["epochs"] == 3 and config["trainer"]["monitor"] == "min val_loss"
    assert config["data_loader"] == base_config["data_loader"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a.json": {"extends": "a.json"}}, r"a\.json: extends a\.json: a cycle \(a\.json -> a\.json\)"),
        (
            {"a.json": {"extends": "b.json"}, "b.json": {"extends": "a.json"}},
            r"a cycle \(a\.json -> b\.json -> a\.json\)",
        ),
        ({"a.json": {"extends": "missing.json"}}, r"missing\.json: file not found"),
        ({"a.json": {"extends": 3}}, r"a\.json: extends: expected the file name of another config, found 3"),
    ],
)
def test_bad_extends_are_one_line(tmp_path, files, message):
    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=message):
        ConfigParser.load(tmp_path / "a.json")


def test_extends_through_a_link_loop_or_a_chain_too_long_is_one_short_line(tmp_path):
    (tmp_path / "loop1.json").symlink_to("loop2.json")
    (tmp_path / "loop2.json").symlink_to("loop1.json")
    (tmp_path / "a.json").write_text(json.dumps({"extends": "loop1.json"}))
    with pytest.raises(ConfigError, match=r"a\.json: extends loop1\.json: cannot follow it \(Symlink loop"):
        ConfigParser.load(tmp_path / "a.json")
    for i in range(1500):  # a chain of 1,500 files: refused at the 21st, in a line of its own size
        (tmp_path / f"c{i}.json").write_text(json.dumps({"extends": f"c{i + 1}.json"}))
    with pytest.raises(ConfigError) as error:
        ConfigParser.load(tmp_path / "c0.json")
    assert str(error.value).endswith("c21.json: more than 20 configs in a chain of extends")
    assert len(str(error.value)) < 300


VICTORESQUE_CONFIG = {
    "name": "Mnist_LeNet",
    "n_gpu": 1,
    "arch": {"type": "MnistModel", "args": {}},
    "data_loader": {
        "type": "MnistDataLoader",
        "args": {"data_dir": "data/", "batch_size": 128, "shuffle": True, "validation_split": 0.1, "num_workers": 2},
    },
    "optimizer": {"type": "Adam", "args": {"lr": 0.001, "weight_decay": 0, "amsgrad": True}},
    "loss": "nll_loss",
    "metrics": ["accuracy", "top_k_acc"],
    "lr_scheduler": {"type": "StepLR", "args": {"step_size": 50, "gamma": 0.1}},
    "trainer": {
        "epochs": 100,
        "save_dir": "saved/",
        "save_period": 1,
        "verbosity": 2,
        "monitor": "min val_loss",
        "early_stop": 10,
        "tensorboard": True,
    },
}


def test_victoresque_config_is_accepted_as_it_is(write_config):
    config = ConfigParser.load(write_config(VICTORESQUE_CONFIG)).config
    assert (config["save_dir"], config["verbosity"], config["tensorboard"]) == ("saved/", 2, True)
    assert not {"save_dir", "verbosity", "tensorboard"} & set(config["trainer"])  # one place each
    clash = json.loads(json.dumps(VICTORESQUE_CONFIG)) | {"save_dir": "elsewhere/"}
    with pytest.raises(ConfigError, match=r'trainer\.save_dir: "saved/" disagrees with save_dir: "elsewhere/"'):
        ConfigParser.load(write_config(clash))


def test_victoresque_flags_work_beside_the_short_ones(write_config):
    import train as train_script

    path = str(write_config(VICTORESQUE_CONFIG))
    config, _, _ = train_script.parse_args(["-c", path, "--learning_rate", "0.01", "--batch_size", "64"])
    assert config["optimizer"]["args"]["lr"] == 0.01 and config["data_loader"]["args"]["batch_size"] == 64
    config, _, _ = train_script.parse_args(["-c", path, "--lr", "0.02", "--bs", "32"])
    assert config["optimizer"]["args"]["lr"] == 0.02 and config["data_loader"]["args"]["batch_size"] == 32


def test_a_key_given_twice_on_the_command_line_is_refused_not_the_last_one_kept(write_config):
    import train as train_script

    path = str(write_config(VICTORESQUE_CONFIG))
    with pytest.raises(ConfigError, match=r"^trainer\.epochs: given twice on the command line \(trainer\.epochs=5, "):
        train_script.parse_args(["-c", path, "--epochs", "5", "trainer.epochs=3"])
    with pytest.raises(ConfigError, match=r"^seed: given twice on the command line \(seed=1, seed=2\); keep one$"):
        train_script.parse_args(["-c", path, "seed=1", "seed=2"])


def test_a_model_file_with_a_syntax_error_is_one_line_naming_its_file_and_line(tmp_path, monkeypatch):
    from roles import Role, subclass_of

    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("")
    (tmp_path / "brokenpkg" / "model.py").write_text("")
    (tmp_path / "brokenpkg" / "net.py").write_text("class Net(:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as error:
        valid_names(Role("brokenpkg.model", subclass_of("torch.nn:Module"), whole_package=True))
    assert str(error.value).startswith("brokenpkg/net.py could not be imported: SyntaxError: ")
    assert str(error.value).endswith("(net.py, line 1)") and "frozen" not in str(error.value)


def test_a_sub_package_that_fails_to_import_is_named_by_its_init_file(tmp_path, monkeypatch):
    from roles import Role, subclass_of

    (tmp_path / "pkgparts" / "sub").mkdir(parents=True)
    (tmp_path / "pkgparts" / "__init__.py").write_text("")
    (tmp_path / "pkgparts" / "model.py").write_text("")
    (tmp_path / "pkgparts" / "sub" / "__init__.py").write_text("import not_installed_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"^pkgparts/sub/__init__\.py could not be imported: ModuleNotFoundError"):
        valid_names(Role("pkgparts.model", subclass_of("torch.nn:Module"), whole_package=True))
