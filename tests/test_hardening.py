"""Issue 18's attack on the final state: each failure it found, as a case that fails on the code it attacked."""

import json

import pytest
import torch

from conftest import ROOT, evaluate, run_script, train
from logger.run_folder import LAST_NAME
from parse_config import ConfigParser
from test_cli import assert_one_error_line
from trainer.checkpoint import load_checkpoint
from utils.errors import ConfigError, DataError
from utils.util import strict_json_loads


def test_a_number_beyond_a_floats_range_is_refused_like_infinity(base_config):
    with pytest.raises(ValueError, match="1e400 is beyond the range"):
        strict_json_loads('{"min_delta": 1e400}')
    base_config["trainer"]["monitor"] = "min val_loss\n"  # `$` let a trailing newline through
    with pytest.raises(ConfigError, match=r"trainer\.monitor"):
        ConfigParser(base_config)


def test_a_name_holding_a_newline_still_makes_one_error_line(tmp_path):
    result = run_script(str(ROOT / "train.py"), "-c", str(tmp_path / "no\nsuch.json"), cwd=tmp_path)
    assert_one_error_line(result, "no\\nsuch.json")


@pytest.mark.e2e
def test_bad_requests_around_a_finished_run_are_one_line(tiny_config, tmp_path):
    tiny_config["lr_scheduler"] = {"type": "CosineAnnealingLR", "args": {}}  # T_max from trainer.epochs
    tiny_config["trainer"]["epochs"] = 1
    _, cosine = train(tiny_config, tmp_path, "cosine")
    # A schedule laid out for the run's epochs cannot be stretched by a resume.
    result = run_script(str(ROOT / "train.py"), "--resume", str(cosine.checkpoint_dir / LAST_NAME), "trainer.epochs=2")
    assert_one_error_line(result, "CosineAnnealingLR's schedule was laid out for the 1 epochs the run started with")
    tiny_config["lr_scheduler"] = None
    _, run = train(tiny_config, tmp_path, "plain")
    last = run.checkpoint_dir / LAST_NAME
    # test.py: one file for both outputs would lose one of them.
    out = str(tmp_path / "same.out")
    assert_one_error_line(run_script(str(ROOT / "test.py"), "-r", str(last), "--out", out, "--predictions", out),
                          "the same file as --out")  # fmt: skip
    # A checkpoint whose RNG state is out of range: one line, the file unchanged.
    state = load_checkpoint(last).state
    state["rng"]["python"][1][5] = 2**70
    crafted = run.checkpoint_dir.parent / "crafted" / LAST_NAME
    crafted.parent.mkdir()
    torch.save(state, crafted)
    before = crafted.read_bytes()
    result = run_script(str(ROOT / "train.py"), "--resume", str(crafted), "trainer.epochs=2")
    assert_one_error_line(result, "training state does not fit")
    assert crafted.read_bytes() == before


def test_a_key_ending_in_a_newline_is_quoted_so_the_message_stays_one_line():
    """Found by the random-documents test: `$` matched before a trailing newline, so {"0\\n": null} was named raw."""
    from utils.errors import key_text, quoted

    assert key_text("0\n") == '"0\\n"' and quoted("a\n") == '"a\\n"' and key_text("ok") == "ok"
    with pytest.raises(ConfigError) as error:
        ConfigParser({"0\n": None})
    assert "\n" not in str(error.value)


def test_a_config_saved_with_a_utf8_bom_is_read(tmp_path, base_config):
    path = tmp_path / "notepad.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(base_config).encode())
    assert ConfigParser.load(path).config["name"] == base_config["name"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"label_smoothing": 2.0}, r"label_smoothing: expected a number in \[0, 1\), found 2\.0"),
        ({"label_smoothing": -0.5}, r"label_smoothing: expected a number in \[0, 1\), found -0\.5"),
        ({"pos_weight": -1}, r"pos_weight: expected a number > 0 .*found -1"),
        ({"pos_weight": 0}, r"pos_weight: expected a number > 0 .*found 0"),
    ],
)
def test_loss_arguments_are_checked_against_their_meaning(args, message):
    from model.loss import bce_with_logits, cross_entropy

    output, target = torch.zeros(4, 1), torch.tensor([0.0, 1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match=message):
        bce_with_logits(output, target, **args)
    if "label_smoothing" in args:
        with pytest.raises(ValueError, match=message):
            cross_entropy(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]), **args)
    assert bce_with_logits(output, target, pos_weight=3.0, label_smoothing=0.1).item() > 0


def test_a_one_cycle_schedule_shorter_than_the_run_is_one_line_before_it_starts(tiny_config, tmp_path):
    tiny_config["lr_scheduler"] = {"type": "OneCycleLR", "args": {"max_lr": 0.01, "epochs": 1}}
    tiny_config["trainer"].update(scheduler_interval="step", epochs=2)
    with pytest.raises(ConfigError, match=r"^lr_scheduler\.args: OneCycleLR is laid out for \d+ steps, the run takes"):
        train(tiny_config, tmp_path, "short")
    assert not (tmp_path / "saved").exists()


@pytest.mark.e2e
def test_a_resume_that_changes_the_steps_of_a_laid_out_schedule_is_one_line(tiny_config, tmp_path):
    tiny_config["lr_scheduler"] = {"type": "OneCycleLR", "args": {"max_lr": 0.01}}  # laid out by the trainer
    tiny_config["trainer"].update(scheduler_interval="step", epochs=2, save_period=1, keep_last=None)
    _, run = train(tiny_config, tmp_path, "cycle")
    first = run.checkpoint_dir / "checkpoint-epoch1.pth"
    with pytest.raises(ConfigError, match=r"^lr_scheduler: the checkpoint's OneCycleLR was laid out for 42 steps; "
                       r"with this config the run takes 82 \(2 epochs x 41\); resume with the batch_size"):  # fmt: skip
        train(None, tmp_path, resume=first, overrides=["data_loader.args.batch_size=32"])
    train(None, tmp_path, resume=first)  # as it was trained: goes on


def test_amp_auto_takes_what_the_cpu_runs_natively_and_emulated_bf16_is_said(monkeypatch, caplog):
    from trainer import evaluation

    cpu = torch.device("cpu")
    monkeypatch.setattr(evaluation, "cpu_runs_bf16", lambda: True)
    assert evaluation.resolve_amp("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(evaluation, "cpu_runs_bf16", lambda: False)  # AVX2 only: bf16 would be emulated
    with caplog.at_level("WARNING", logger="trainer"):
        assert evaluation.resolve_amp("auto", cpu) is None and caplog.records == []
        assert evaluation.resolve_amp("bf16", cpu) == torch.bfloat16
    (record,) = caplog.records
    assert record.getMessage().startswith("trainer.amp: bf16 on this CPU is emulated (no AVX512-BF16 or AMX)")


def test_test_py_evaluates_in_the_runs_precision_as_its_validation_did(tiny_config, tmp_path):
    """A run trained (and validated) under bf16 autocast: test.py on the validation split gives back the same
    loss and accuracy, to the digit (evaluated in fp32 they were 1e-3 off)."""
    tiny_config["trainer"].update(epochs=1, amp="bf16")
    result, run = train(tiny_config, tmp_path)
    evaluated = evaluate(run.checkpoint_dir / LAST_NAME, "--split", "valid", "--out", str(tmp_path / "valid.json"))
    assert evaluated["n_samples"] == 152
    assert evaluated["loss"] == pytest.approx(result["last"]["val_loss"], rel=1e-6, abs=0)
    assert evaluated["accuracy"] == pytest.approx(result["last"]["val_accuracy"], rel=1e-6, abs=0)


def test_a_new_lr_on_resuming_a_onecycle_run_is_refused_not_undone_a_step_later(tiny_config, tmp_path):
    """OneCycleLR computes every step's rate from its max_lr: a resumed run's --lr lasted one step, while
    info.log said it held from then on (found by a user's freeze-unfreeze recipe)."""
    # laid out for 2 epochs of 21 batches, of which the run trains 1
    tiny_config["lr_scheduler"] = {"type": "OneCycleLR", "args": {"max_lr": 0.01, "total_steps": 42}}
    tiny_config["trainer"].update(epochs=1, scheduler_interval="step")
    _, run = train(tiny_config, tmp_path)
    last = run.checkpoint_dir / LAST_NAME
    before = last.read_bytes()
    refused = r"^optimizer\.args\.lr: OneCycleLR sets the learning rate from its own max_lr, so a new lr would last "
    with pytest.raises(ConfigError, match=refused + r"one step; .* with another lr_scheduler\.args\.max_lr$"):
        train(None, tmp_path, resume=last, overrides=["trainer.epochs=2", "--lr", "0.5"])
    assert last.read_bytes() == before
    _, again = train(None, tmp_path, resume=last, overrides=["trainer.epochs=2"])  # the same rate: goes on
    assert load_checkpoint(again.checkpoint_dir / LAST_NAME).state["epoch"] == 2


def test_an_unfreeze_after_the_last_epoch_is_said(tiny_config, tmp_path):
    """Allowed (a resume with more epochs reaches it), but a run that never unfreezes says so."""
    tiny_config["finetune"] = {"strategy": "freeze_unfreeze", "backbone": ["conv1"], "unfreeze_epoch": 9}
    tiny_config["trainer"]["epochs"] = 1
    _, run = train(tiny_config, tmp_path)
    said = [line for line in (run.log_dir / "info.log").read_text().splitlines() if "finetune:" in line]
    assert len(said) == 1 and said[0].endswith(
        "finetune: unfreezing at epoch 9, after this run's 1 epochs: those layers stay frozen unless the run is "
        "resumed with more epochs"
    )


def test_an_interrupted_torchrun_run_says_once_how_to_resume_it_under_torchrun(monkeypatch, capsys):
    """It said `python train.py --resume ...` once per rank: a one-process resume, another batch order."""
    from utils import distributed
    from utils.errors import TrainingInterrupted, one_line_errors

    assert distributed.launch_command("train.py") == "python train.py"
    monkeypatch.setattr(distributed, "rank_and_world_size", lambda: (1, 4))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert distributed.launch_command("train.py") == "torchrun --nproc_per_node 4 train.py"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert distributed.launch_command("train.py") == (
        "torchrun --nnodes 2 (with your rendezvous flags) --nproc_per_node 2 train.py"
    )
    for rank, said in (("1", ""), ("0", "interrupted: SIGINT received; ...\n")):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as exited, one_line_errors(interrupted="-"):
            raise TrainingInterrupted("SIGINT received; ...", 2)
        assert exited.value.code == 130 and capsys.readouterr().err == said


def test_a_freezing_setup_that_leaves_nothing_to_train_names_the_backbone(tiny_config, tmp_path):
    tiny_config["finetune"] = {"strategy": "freeze_unfreeze", "backbone": ["conv1", "conv2", "fc1", "fc2"]}
    tiny_config["finetune"]["unfreeze_epoch"] = 2
    with pytest.raises(ConfigError, match=r"^finetune\.backbone: conv1, conv2, fc1, fc2 holds every parameter of the "
                       r"model, so the first epoch would train nothing"):  # fmt: skip
        train(tiny_config, tmp_path, "frozen")
    assert not (tmp_path / "saved").exists()


class Picky(torch.nn.Module):
    """Fails on a batch of fewer than 20 samples, as a layer may on few samples: only the epoch's last batch."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) < 20:
            raise ValueError(f"needs 20 samples, got {len(x)}")
        return self.linear(x.flatten(1)).log_softmax(dim=1)


def test_the_rehearsal_tries_the_epochs_smallest_batch_as_well_as_the_first(tiny_config):
    from test_around_the_loop import trainer_with

    trainer = trainer_with(tiny_config, [], model=Picky())  # 1297 training samples: the last batch of 64 holds 17
    with pytest.raises(ConfigError, match=r"^the epoch's last and smallest training batch \(17 samples\) failed, "
                       r"before anything was written: ValueError: needs 20 samples, got 17"):  # fmt: skip
        trainer.rehearse()
    tiny_config["data_loader"]["args"]["batch_size"] = 1297 // 2 + 1  # two batches: 649 and 648
    assert trainer_with(tiny_config, [], model=Picky()).rehearse()["last"]["epoch"] == 1


def test_a_one_cycle_schedule_longer_than_the_run_trains(tiny_config, tmp_path):
    """Its own epochs and steps_per_epoch, longer than the run: allowed (the rehearsal took it for a resume)."""
    tiny_config["lr_scheduler"] = {"type": "OneCycleLR", "args": {"max_lr": 0.01, "epochs": 5, "steps_per_epoch": 21}}
    tiny_config["trainer"].update(scheduler_interval="step", epochs=1)
    assert train(tiny_config, tmp_path, "longer")[0]["last"]["epoch"] == 1


def test_two_parts_of_one_name_in_two_files_are_one_line_naming_both(base_config, tmp_path, monkeypatch):
    import roles

    (tmp_path / "twins").mkdir()
    (tmp_path / "twins" / "__init__.py").write_text("")
    net = "from torch import nn\n\n\nclass TwinNet(nn.Module):\n    pass\n"
    (tmp_path / "twins" / "a_net.py").write_text(net)
    (tmp_path / "twins" / "b_net.py").write_text(net)
    monkeypatch.syspath_prepend(str(tmp_path))
    role = roles.Role("twins.a_net", roles.subclass_of("torch.nn:Module"), whole_package=True)
    with pytest.raises(ConfigError, match=r"^twins/a_net\.py and twins/b_net\.py both define TwinNet; rename one"):
        roles.valid_names(role)


def test_a_batch_size_of_one_with_batch_norm_is_one_line(tmp_path):
    from data_loader.data_loaders import DigitsDataLoader

    with pytest.raises(DataError, match=r"^data_loader\.args\.batch_size: 1 sample a batch, which BatchNorm cannot"):
        DigitsDataLoader(batch_size=1).fit_batch_norm(torch.nn.BatchNorm1d(4))
    DigitsDataLoader(batch_size=1).fit_batch_norm(torch.nn.Linear(4, 2))  # no BatchNorm: fine
