"""Metrics: per-batch functions and epoch-level metrics equal scikit-learn's on the same predictions."""

import io
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn import metrics as sk

from model.metric import accuracy, auroc, confusion_matrix, f1, mae, r2
from parse_config import ConfigParser
from trainer.metric_tracker import MetricTracker

N = 67  # batches of 32, 32 and 3: the last one small


def regression_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    target = torch.randn(N, 1, generator=g, dtype=torch.float64)
    return target + 0.6 * torch.randn(N, 1, generator=g, dtype=torch.float64), target


def binary_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    target = (torch.rand(N, 1, generator=g) > 0.4).double()
    return 2 * target - 1 + 1.5 * torch.randn(N, 1, generator=g, dtype=torch.float64), target


def multiclass_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    target = torch.randint(0, 4, (N,), generator=g)
    scores = torch.randn(N, 4, generator=g, dtype=torch.float64)
    scores[torch.arange(N), target] += 1.0
    return scores.log_softmax(dim=1), target


def sigmoid(x: torch.Tensor) -> np.ndarray:
    return torch.sigmoid(x).numpy().ravel()


CASES = {
    "r2": (r2, {}, regression_data, lambda o, t: sk.r2_score(t.numpy(), o.numpy())),
    "mae": (mae, {}, regression_data, lambda o, t: sk.mean_absolute_error(t.numpy(), o.numpy())),
    "accuracy binary": (  # one logit per sample: a class by its sign (it once compared (N,) with (N, 1))
        lambda: accuracy,
        {},
        binary_data,
        lambda o, t: sk.accuracy_score(t.numpy().ravel(), sigmoid(o) > 0.5),
    ),
    "accuracy multiclass": (
        lambda: accuracy,
        {},
        multiclass_data,
        lambda o, t: sk.accuracy_score(t.numpy(), o.argmax(1).numpy()),
    ),
    "auroc binary": (auroc, {}, binary_data, lambda o, t: sk.roc_auc_score(t.numpy().ravel(), sigmoid(o))),
    "f1 binary": (f1, {}, binary_data, lambda o, t: sk.f1_score(t.numpy().ravel(), sigmoid(o) > 0.5)),
    "auroc multiclass": (
        auroc,
        {"num_classes": 4},
        multiclass_data,
        lambda o, t: sk.roc_auc_score(t.numpy(), o.softmax(1).numpy(), multi_class="ovr", average="macro"),
    ),
    "f1 multiclass": (
        f1,
        {"num_classes": 4},
        multiclass_data,
        lambda o, t: sk.f1_score(t.numpy(), o.argmax(1).numpy(), average="macro"),
    ),
}


def tracked(metric, output: torch.Tensor, target: torch.Tensor, batch: int = 32) -> dict:
    tracker = MetricTracker({"m": metric})
    for start in range(0, len(target), batch):
        tracker.update(torch.zeros(()), output[start : start + batch], target[start : start + batch])
    return tracker.result()


@pytest.mark.parametrize("case", list(CASES))
def test_epoch_metrics_equal_scikit_learn_over_an_epoch_with_a_small_last_batch(case):
    metric_class, args, data, expected = CASES[case]
    output, target = data()
    value = tracked(metric_class(**args), output, target)["m"]
    assert value == pytest.approx(expected(output, target), abs=1e-6)
    # The per-batch average of the same metric is what used to be reported, and it is not the same number.
    if case == "r2":
        batches = [(output[s : s + 32], target[s : s + 32]) for s in (0, 32, 64)]
        per_batch = sum(len(t) * sk.r2_score(t.numpy(), o.numpy()) for o, t in batches) / N
        assert abs(per_batch - value) > 0.01


@pytest.mark.parametrize("metric", [auroc, f1, confusion_matrix])
def test_a_binary_epoch_metric_given_a_score_per_class_asks_for_num_classes(metric):
    output, target = multiclass_data()
    fix = f'the model gives 4; give it the number of classes: {{"type": "{metric.__name__}", "args"'
    with pytest.raises(ValueError, match=fix):
        tracked(metric(), output, target)


@pytest.mark.parametrize(("data", "args"), [(binary_data, {}), (multiclass_data, {"num_classes": 4})])
def test_confusion_matrix_equals_scikit_learn(data, args):
    output, target = data()
    predicted = (torch.sigmoid(output) > 0.5).long().ravel() if not args else output.argmax(1)
    matrix = tracked(confusion_matrix(**args), output, target)["m"]
    assert matrix == sk.confusion_matrix(target.long().numpy().ravel(), predicted.numpy()).tolist()


def test_a_partial_epoch_saved_and_loaded_gives_the_same_result():
    output, target = multiclass_data()
    whole = tracked(auroc(num_classes=4), output, target)["m"]
    first = MetricTracker({"m": auroc(num_classes=4)})
    first.update(torch.zeros(()), output[:40], target[:40])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # as a mid-epoch checkpoint holds it
    buffer.seek(0)
    second = MetricTracker({"m": auroc(num_classes=4)})
    second.load_state_dict(torch.load(buffer, weights_only=True))
    second.update(torch.zeros(()), output[40:], target[40:])
    assert second.result()["m"] == whole


def test_training_and_validation_trackers_do_not_share_a_state():
    output, target = regression_data()
    metric = r2()
    a, b = MetricTracker({"r2": metric}), MetricTracker({"r2": metric})
    a.update(torch.zeros(()), output, target)
    b.update(torch.zeros(()), target, target)  # perfect predictions
    assert b.result()["r2"] == 1.0 and a.result()["r2"] < 1.0


def _ddp_worker(rank: int, port: int, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        values = {}
        for case, (metric_class, args, data, _) in CASES.items():
            output, target = data()
            values[case] = tracked(metric_class(**args), output[rank::2], target[rank::2], batch=16)["m"]
        results[rank] = values
    finally:
        dist.destroy_process_group()


def _ddp_resume_worker(rank: int, port: int, results: dict) -> None:
    """Each rank tracks its shard; a mid-epoch checkpoint after 3 of its 5 batches (rank 0's file), then a resume
    on fresh trackers for the rest."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        output, target = multiclass_data()
        output, target = output[rank::2], target[rank::2]
        metrics = {"m": auroc(num_classes=4), "acc": accuracy}
        before = MetricTracker(metrics)
        for start in range(0, 30, 10):
            before.update(torch.tensor(float(rank + start)), output[start : start + 10], target[start : start + 10])
        saved = [before.state_dict()]  # a collective: every rank calls it
        dist.broadcast_object_list(saved, src=0)  # what rank 0 wrote to last.pth, which every rank reads back
        after = MetricTracker(metrics)
        after.load_state_dict(saved[0])
        for start in range(30, len(target), 10):
            after.update(torch.tensor(float(rank + start)), output[start : start + 10], target[start : start + 10])
        results[rank] = after.result()
    finally:
        dist.destroy_process_group()


@pytest.mark.e2e
def test_a_partial_epoch_saved_under_ddp_holds_every_ranks_samples():
    """Under torchrun a mid-epoch resume reported the interrupted epoch's loss and metrics from rank 0's samples
    counted twice (0.2098 against 0.2092 uninterrupted); the weights were exact."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_ddp_resume_worker, args=(port, results), nprocs=2)
    output, target = multiclass_data()
    batches = [
        (rank + start, len(target[rank::2][start : start + 10])) for rank in (0, 1) for start in range(0, 34, 10)
    ]
    assert results[0] == results[1]
    assert results[0]["loss"] == pytest.approx(sum(loss * n for loss, n in batches) / len(target), abs=1e-12)
    assert results[0]["acc"] == pytest.approx((output.argmax(1) == target).double().mean().item(), abs=1e-12)
    assert results[0]["m"] == pytest.approx(tracked(auroc(num_classes=4), output, target)["m"], abs=1e-12)


@pytest.mark.e2e
def test_epoch_metrics_are_exact_over_two_ddp_ranks():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(port, results), nprocs=2)
    for case, (_, _, data, expected) in CASES.items():
        output, target = data()
        assert results[0][case] == results[1][case]  # every rank reports the same number
        assert results[0][case] == pytest.approx(expected(output, target), abs=1e-6), case


def test_bce_with_logits_smooths_labels_and_weighs_positives_as_torch_does():
    from model.loss import bce_with_logits

    output, target = torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([1, 0, 1])
    smoothed = torch.tensor([[0.95], [0.05], [0.95]])  # label_smoothing 0.1: 1 -> 0.95, 0 -> 0.05
    expected = torch.nn.functional.binary_cross_entropy_with_logits(output, smoothed, pos_weight=torch.tensor(3.0))
    assert bce_with_logits(output, target, pos_weight=3.0, label_smoothing=0.1).item() == pytest.approx(expected.item())
    plain = torch.nn.functional.binary_cross_entropy_with_logits(output, target.float().reshape(3, 1))
    assert bce_with_logits(output, target).item() == pytest.approx(plain.item())


def test_a_loss_classes_tensor_arguments_are_written_as_json_lists(base_config):
    base_config["loss"] = {"type": "BCEWithLogitsLoss", "args": {"pos_weight": [4.0]}}
    criterion = ConfigParser(base_config).init_ftn("loss")
    assert torch.equal(criterion.pos_weight, torch.tensor([4.0]))
    base_config["loss"] = {"type": "CrossEntropyLoss", "args": {"weight": [1.0, 2.0], "label_smoothing": 0.1}}
    criterion = ConfigParser(base_config).init_ftn("loss")
    assert torch.equal(criterion.weight, torch.tensor([1.0, 2.0])) and criterion.label_smoothing == 0.1


def test_an_undefined_epoch_metric_is_nan_with_one_warning_and_never_the_best(caplog):
    """AUROC of one class, F1 with no positive target: NaN (torchmetrics says 0.0, which could become "best")."""
    from model.metric import auroc, f1
    from utils.monitor import Monitor

    no_positive = (torch.tensor([[0.3], [-1.2], [2.0]]), torch.tensor([[0.0], [0.0], [0.0]]))
    for metric in (auroc(), f1()):
        metric.update(*no_positive)
        with caplog.at_level("WARNING", logger="trainer"):
            assert math.isnan(metric.compute())
    multiclass = auroc(num_classes=3)
    multiclass.update(torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))  # class 2 never seen
    assert math.isnan(multiclass.compute())
    assert [r.getMessage() for r in caplog.records] == [
        "auroc is undefined: the epoch's targets hold 1 of its 2 classes; logged as NaN, never the best epoch",
        "f1 is undefined: the epoch's targets hold no positive; logged as NaN, never the best epoch",
        "auroc is undefined: the epoch's targets hold 2 of its 3 classes; logged as NaN, never the best epoch",
    ]
    assert "\n" not in caplog.records[0].getMessage()
    defined = auroc()
    defined.update(torch.tensor([[0.3], [-1.2], [2.0]]), torch.tensor([[1.0], [0.0], [1.0]]))
    assert defined.compute() == 1.0
    monitor = Monitor.parse("max val_auroc")
    assert not monitor.improves(math.nan, monitor.worst, 0.0) and not monitor.improves(math.nan, 0.5, 0.0)


def test_an_undefined_metric_is_written_as_null_in_results_json(tmp_path, capsys):
    from utils.util import strict_json_loads, write_json, write_output

    write_json({"auroc": math.nan, "loss": 0.5, "per_class": [math.inf, 1.0]}, tmp_path / "r.json")
    assert strict_json_loads((tmp_path / "r.json").read_text()) == {
        "auroc": None,
        "loss": 0.5,
        "per_class": [None, 1.0],
    }
    write_output({"f1": math.nan}, "-")
    assert strict_json_loads(capsys.readouterr().out) == {"f1": None}


def test_with_results_on_stdout_the_warnings_go_to_stderr(capsys):
    """test.py --out -: stdout holds the JSON alone, an undefined metric's warning goes to stderr."""
    import logging

    from logger.logger import setup_logging

    setup_logging(None, 0, "stderr")
    logging.getLogger("trainer").warning("auroc is undefined: a test line")
    setup_logging(None, 0)
    captured = capsys.readouterr()
    assert "auroc is undefined" in captured.err and captured.out == ""
