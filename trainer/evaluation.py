"""Evaluation and predictions: a model's loss and metrics over a data set (validation, test.py), and per-sample
predictions as CSV rows (predict.py on new inputs, test.py --predictions on a labelled split).

One row per sample: its id (a file name, a row number), the target where there is one, the prediction (a
class name, or a value for regression) and, for classification, a probability per class. How an output is
read is the data loader's `task`; class names and a regression target's statistics are its `preprocessing`.
A text cell that a spreadsheet would run as a formula (an id `=HYPERLINK(...)`, a class `@SUM(A1)`) is written
with a leading single quote unless the user asks for raw values (`--raw-csv`).
"""

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from base.base_data_loader import BaseDataLoader
from trainer.checkpoint import KEY_DATA, load_model_state
from trainer.metric_tracker import MetricTracker
from utils.errors import ConfigError
from utils.util import feature_module


def resolve_amp(amp: bool | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `trainer.amp` on this device: true means fp16 on CUDA and bf16 on the CPU; "auto"
    what the device runs natively (bf16 where CUDA has it, else fp16; bf16 on a CPU with AVX512-BF16 or AMX),
    else fp32. bf16 on a CPU without them is emulated: a step takes many times fp32's (35x measured on AVX2)."""
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_runs_bf16() else None
    if amp is False:
        return None
    if amp is True:
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    else:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[amp]
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_runs_bf16():
        logging.getLogger("trainer").warning(
            "trainer.amp: bf16 on this CPU is emulated (no AVX512-BF16 or AMX), many times slower than fp32; "
            'use "auto" (fp32 here) or false'
        )
    return dtype


def cpu_runs_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles), as PyTorch's own probes say."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe is not None and probe() for probe in probes)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass and the loss, or nothing when `dtype` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def evaluate(
    model: nn.Module,
    data_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    criterion: Callable,
    metric_fns: dict[str, Callable],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    desc: str = "Validation",
) -> dict[str, float]:
    """Loss and metrics averaged per sample over a data set (used for validation and by test.py)."""
    model.eval()
    tracker = MetricTracker(metric_fns, device=device)
    with torch.no_grad():
        for data, target in tqdm(data_loader, desc=desc, disable=None, leave=False):
            data = data.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                output = model(data)
                loss = criterion(output, target)
            tracker.update(loss, output, target)
    return tracker.result()


def evaluation_loader(config: Any, checkpoint: Any, **script_arguments: Any) -> BaseDataLoader:
    """The config's data loader (`config`: a ConfigParser) as test.py and predict.py build it: with the script's
    arguments (`split`; `inputs`, new inputs to predict), the config's seed, and the preprocessing the checkpoint
    was trained with (class names, statistics) where the loader takes it."""
    takes, preprocessing = config.takes("data_loader"), checkpoint.state.get(KEY_DATA)
    if "inputs" in script_arguments:
        if "inputs" not in takes:
            raise ConfigError(
                f"data_loader.type: {config['data_loader']['type']} cannot read new inputs for predictions (it has "
                "no `inputs` argument); a loader that takes one can (the images, csv, text and kaggle features' do)"
            )
        if preprocessing is None:
            raise ConfigError(f"{checkpoint.path}: has no data preprocessing (saved by an older version); retrain it")
    if "preprocessing" in takes and preprocessing is not None:
        script_arguments["preprocessing"] = preprocessing
    return config.init_obj("data_loader", seed=config["seed"], **script_arguments)


def evaluated_model(config: Any, checkpoints: list, task: str, tta: str | None = None) -> nn.Module:
    """The model to evaluate: the checkpoint's; several checkpoints (a cross-validation's folds) or test-time
    augmentation (`tta`: view names) make their ensemble (the cv feature's Ensemble)."""
    if len(checkpoints) == 1 and tta is None:
        return trained_model(config, checkpoints[0])
    ensemble = feature_module("trainer.ensemble", "cv", "--tta" if tta is not None else "--resume")
    return ensemble.Ensemble([trained_model(config, c) for c in checkpoints], task, ensemble.views(tta))


def trained_model(config: Any, checkpoint: Any) -> nn.Module:
    """The configured model with the checkpoint's weights, loaded strictly. Pretrained weights the config
    names (`arch.args.weights` of TorchvisionModel) are not read: the checkpoint replaces them, and the file
    may not exist where the checkpoint is evaluated."""
    model = config.init_obj("arch", **({"weights": None} if "weights" in config.takes("arch") else {}))
    load_model_state(model, checkpoint)
    return model


def predict(
    model: nn.Module,
    data_loader: BaseDataLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    desc: str = "Predict",
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(sample ids, outputs (N, ...) float32, targets (N, ...)) over the loader, in its order, on the CPU."""
    model.eval()
    data_loader.set_epoch(1)
    ids = [data_loader.sample_id(i) for _, batch in data_loader.epoch_sampler.iter_batches() for i in batch]
    outputs, targets = [], []
    with torch.no_grad():
        for data, target in tqdm(data_loader, desc=desc, disable=None, leave=False):
            with autocast(device, amp_dtype):
                output = model(data.to(device, non_blocking=True))
            outputs.append(output.float().cpu())
            targets.append(target)
    if not outputs:
        return ids, torch.empty(0), torch.empty(0)
    return ids, torch.cat(outputs), torch.cat(targets)


def prediction_rows(
    ids: list[str],
    outputs: torch.Tensor,
    targets: torch.Tensor | None,
    data_loader: BaseDataLoader,
    float_format: str = ".6g",
) -> tuple[list[str], list[list[Any]]]:
    """The header and the rows of a predictions file; `targets` None leaves out the target column. New inputs
    of a loader with a `submission` layout (id column, target column) are written in it: Kaggle's
    `image_name,target`, the probability of the positive class (binary), the class (classification) or the
    value (regression). `float_format`: how probabilities are written (a format spec: ".6g", ".4f")."""
    task, preprocessing = data_loader.task, data_loader.preprocessing
    submission = data_loader.submission if targets is None else None
    id_name, target_name = submission or ("id", "target")
    if task == "regression":
        mean, std = preprocessing.get("target_mean", 0.0), preprocessing.get("target_std", 1.0)
        # float64: a float32 output times a std near 1e200 is inf (NaN after the mean), near 1e-300 it is 0
        predicted = (outputs.reshape(len(ids), -1)[:, 0].double() * std + mean).tolist()
        truth = None if targets is None else (targets.reshape(len(ids), -1)[:, 0].double() * std + mean).tolist()
        header = [id_name, *(["target"] if truth is not None else []), target_name if submission else "prediction"]
        return header, [[i, *([t] if truth is not None else []), p] for i, t, p in _zip(ids, truth, predicted)]
    classes, probabilities = _class_probabilities(task, outputs.reshape(len(ids), -1), data_loader.classes)
    predicted = probabilities.argmax(dim=1).tolist()
    if submission and task == "binary":
        positive = probabilities[:, 1].tolist()
        return [id_name, target_name], [[i, format(q, float_format)] for i, q in zip(ids, positive, strict=True)]
    if submission:
        return [id_name, target_name], [[i, classes[p]] for i, p in zip(ids, predicted, strict=True)]
    truth = None if targets is None else targets.reshape(len(ids), -1)[:, 0].long().tolist()
    header = ["id", *(["target"] if truth is not None else []), "prediction", *(f"prob_{c}" for c in classes)]
    rows = []
    for i, t, p, probs in _zip(ids, truth, predicted, probabilities.tolist()):
        target = [classes[t]] if t is not None else []
        rows.append([i, *target, classes[p], *(format(q, float_format) for q in probs)])
    return header, rows


def _class_probabilities(task: str, outputs: torch.Tensor, classes: list[str] | None) -> tuple[list[str], torch.Tensor]:
    """The class names and each sample's probabilities (N, classes) of a classifier's outputs (N, ...)."""
    if task == "binary":
        positive = torch.sigmoid(outputs[:, 0])
        probabilities = torch.stack([1 - positive, positive], dim=1)
        classes = classes or ["0", "1"]
    elif task == "classification":
        probabilities = outputs.softmax(dim=1)  # of logits or of log-probabilities alike
        classes = classes or [str(c) for c in range(outputs.shape[1])]
    else:
        raise ConfigError(f"data_loader.task: unknown task {task!r} (classification, binary, regression)")
    if len(classes) != probabilities.shape[1]:
        raise ConfigError(
            f"the model gives {probabilities.shape[1]} scores per sample, the data has {len(classes)} classes"
        )
    return classes, probabilities


def _zip(ids: list, truth: list | None, *columns: list) -> Any:
    return zip(ids, truth if truth is not None else [None] * len(ids), *columns, strict=True)
