"""Measure the trainer's overhead, the data path and start-up, side by side in one run.

    python benchmarks/throughput.py            # the reference workload, a few minutes on 2 CPU cores
    python benchmarks/throughput.py --tiny     # seconds; what the tests run (the numbers mean nothing)
    python benchmarks/throughput.py --compile  # also the Trainer with trainer.compile (torch.compile)
    python benchmarks/throughput.py --images   # the image-folder data path instead (benchmarks/image_folder.py)

Workload: MNIST-format 28x28 images (11,520 training + 1,280 validation, written as idx files and read
through torchvision), LeNet (MnistModel), Adam, batch 128, accuracy and top-3 metrics. Every variant is
repeated, the repeats interleaved (A B C D E, A B C D E, ...) so that a noisy neighbour slows all of them
alike, and each is reported as the median, min and max seconds per epoch.

  hand loop     a hand-written loop over the project's MNIST DataLoader: train, metrics, validation,
                TensorBoard scalars and one checkpoint per epoch -- what the Trainer does, without it
  trainer       the project's Trainer doing that epoch on the same DataLoader and model
  our data      the train step alone over the project's MNIST DataLoader (decoded once, normalized per batch)
  torchvision   the same train step over torchvision's per-sample pipeline (PIL, ToTensor, Normalize per image)
  floor         the same train step over a tensor already normalized in memory (no DataLoader at all)
  compiled      (--compile) the trainer variant with the model compiled in place by torch.compile
  train.py      (a ratio) an epoch of `python train.py -c config_mnist.json` on the same files, whole processes:
                (T(3 epochs) - T(1 epoch)) / 2, with its 2 DataLoader workers, TensorBoard and checkpoints
"""

import argparse
import dataclasses
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_mnist(folder: Path, n_train: int, n_test: int) -> None:
    """Synthetic MNIST-format files: random strokes are as costly to load and train on as real digits."""
    import numpy as np

    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = (rng.random((n, 28, 28)) > 0.8).astype(np.uint8) * 255
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.tobytes())


def measure(variants: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each variant, interleaved; one untimed warm-up round first."""
    for run in variants.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return times


def startup_seconds(config_path: Path, repeats: int) -> tuple[float, float]:
    """(import torch + torchvision + tensorboard, train.py up to and through its first step), medians."""
    imports = [sys.executable, "-c", "import torch, torchvision; from torch.utils.tensorboard import SummaryWriter"]
    train = [sys.executable, str(ROOT / "train.py"), "-c", str(config_path), "trainer.epochs=1", "trainer.len_epoch=1"]
    timings: dict[str, list[float]] = {"imports": [], "train": []}
    for _ in range(repeats):
        for name, command in (("imports", imports), ("train", train)):
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
            timings[name].append(time.perf_counter() - started)
    return statistics.median(timings["imports"]), statistics.median(timings["train"])


def process_epoch_seconds(config_path: Path, repeats: int) -> float:
    """An epoch of train.py as a user runs it, whole processes: (T(3 epochs) - T(1 epoch)) / 2, the median over
    interleaved repeats. Start-up, the rehearsal and the first epoch cancel out; every epoch's checkpoint,
    TensorBoard scalars and DataLoader workers stay in."""
    command = [sys.executable, str(ROOT / "train.py"), "-c", str(config_path), "verbosity=0"]
    epochs = []
    for _ in range(repeats):
        seconds = {}
        for n in (1, 3):
            started = time.perf_counter()
            subprocess.run([*command, f"trainer.epochs={n}"], check=True, capture_output=True, cwd=ROOT)
            seconds[n] = time.perf_counter() - started
        epochs.append((seconds[3] - seconds[1]) / 2)
    return statistics.median(epochs)


def main(tiny: bool, compiled: bool = False) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))  # a script in benchmarks/ imports the project like train.py does
    import torch
    from torchvision import datasets, transforms

    from data_loader.data_loaders import MnistDataLoader
    from logger.run_folder import RunFolder
    from logger.visualization import Writer
    from model.metric import accuracy, top_k_acc
    from model.model import MnistModel
    from trainer.checkpoint import save_checkpoint
    from trainer.options import TrainerOptions
    from trainer.trainer import Trainer

    n_train, n_valid = (512, 128) if tiny else (11_520, 1_280)
    repeats = 1 if tiny else 5
    batch_size, workers = 128, 2
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="throughput-"))
    write_mnist(work, n_train + n_valid, 256)

    def loader(split: str) -> MnistDataLoader:
        return MnistDataLoader(
            str(work), batch_size, validation_split=n_valid, download=False, split=split, num_workers=0
        )

    train_loader, valid_loader = loader("train"), loader("valid")
    model = MnistModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = torch.nn.functional.nll_loss
    metric_fns = {"accuracy": accuracy, "top_k_acc": lambda o, t: top_k_acc(o, t, k=3)}

    def step(data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output = model(data)
        loss = criterion(output, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return output, loss

    # -- the hand-written loop: everything the Trainer does in an epoch, written out ---------------------------
    hand_writer = Writer(work / "tb_hand")
    epoch_counter = {"hand": 0}
    hand_best = {"val_loss": float("inf")}

    def hand_loop() -> None:
        epoch_counter["hand"] += 1
        epoch = epoch_counter["hand"]
        model.train()
        sums = {"loss": 0.0, "accuracy": 0.0, "top_k_acc": 0.0}
        count = 0
        train_loader.set_epoch(epoch)
        for batch_idx, (data, target) in enumerate(train_loader):
            output, loss = step(data, target)
            n = len(target)
            with torch.no_grad():
                sums["loss"] += loss.detach() * n
                for name, fn in metric_fns.items():
                    sums[name] += fn(output, target) * n
            count += n
            if batch_idx % 10 == 0:
                hand_writer.add_step_scalar("loss/train_step", loss.item(), batch_idx)
        model.eval()
        valid = {"loss": 0.0, "accuracy": 0.0, "top_k_acc": 0.0}
        valid_count = 0
        valid_loader.set_epoch(epoch)
        with torch.no_grad():
            for data, target in valid_loader:
                output = model(data)
                n = len(target)
                valid["loss"] += criterion(output, target) * n
                for name, fn in metric_fns.items():
                    valid[name] += fn(output, target) * n
                valid_count += n
        for name in sums:
            hand_writer.add_scalar(f"{name}/train", float(sums[name]) / count, epoch)
            hand_writer.add_scalar(f"{name}/valid", float(valid[name]) / valid_count, epoch)
        # The same files the Trainer writes with save_period 1: last, the epoch's, and the best when it improves.
        paths = [work / "hand_last.pth", work / f"hand_epoch{epoch}.pth"]
        val_loss = float(valid["loss"]) / valid_count
        if val_loss < hand_best["val_loss"]:
            hand_best["val_loss"] = val_loss
            paths.append(work / "hand_best.pth")
        state = {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
        save_checkpoint(state, *paths)

    # -- the project's Trainer on the same loader and model: one more epoch per call ------------------------------
    trainer_dir = work / "trainer"
    trainer_dir.mkdir()
    trainer = Trainer(
        model, criterion, metric_fns, optimizer, config={}, device=torch.device("cpu"),
        data_loader=train_loader, valid_data_loader=valid_loader,
        options=TrainerOptions(epochs=0, monitor="min val_loss"),
    )  # fmt: skip
    trainer_run, trainer_writer = RunFolder("bench", trainer_dir, trainer_dir), Writer(work / "tb_trainer")

    def trainer_epoch() -> None:
        trainer.options = dataclasses.replace(trainer.options, epochs=trainer.options.epochs + 1)
        trainer.train(trainer_run, trainer_writer)

    # -- the data paths, with the bare train step ------------------------------------------------------------------
    def our_data() -> None:
        model.train()
        train_loader.set_epoch(1)
        for data, target in train_loader:
            step(data, target)

    per_sample = datasets.MNIST(
        str(work),
        train=True,
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]),
    )
    per_sample_subset = torch.utils.data.Subset(per_sample, range(n_train))
    torchvision_loader = torch.utils.data.DataLoader(
        per_sample_subset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=True
    )

    def torchvision_data() -> None:
        model.train()
        for data, target in torchvision_loader:
            step(data, target)

    floor_images = ((per_sample.data[:n_train].float() / 255 - 0.1307) / 0.3081).unsqueeze(1).contiguous()
    floor_targets = per_sample.targets[:n_train]

    def floor() -> None:
        model.train()
        order = torch.randperm(n_train)
        for start in range(0, n_train, batch_size):
            index = order[start : start + batch_size]
            step(floor_images[index], floor_targets[index])

    variants = {"hand loop": hand_loop, "trainer": trainer_epoch, "our data": our_data,
                "torchvision": torchvision_data, "floor": floor}  # fmt: skip
    if compiled:
        compiled_model = MnistModel()
        compiled_dir = work / "compiled"
        compiled_dir.mkdir()
        compiled_trainer = Trainer(
            compiled_model, criterion, metric_fns, torch.optim.Adam(compiled_model.parameters(), lr=1e-3),
            config={}, device=torch.device("cpu"), data_loader=train_loader, valid_data_loader=valid_loader,
            options=TrainerOptions(epochs=0, monitor="min val_loss", compile=True),
        )  # fmt: skip
        compiled_run = RunFolder("compiled", compiled_dir, compiled_dir)
        compiled_writer = Writer(work / "tb_compiled")

        def compiled_epoch() -> None:
            opts = compiled_trainer.options
            compiled_trainer.options = dataclasses.replace(opts, epochs=opts.epochs + 1)
            compiled_trainer.train(compiled_run, compiled_writer)

        variants["compiled"] = compiled_epoch
    times = measure(variants, repeats)

    config = json.loads((ROOT / "config_mnist.json").read_text())
    config["data_loader"]["args"].update(data_dir=str(work), validation_split=n_valid, download=False)
    config["save_dir"] = str(work / "saved")
    config_path = work / "config.json"
    config_path.write_text(json.dumps(config))
    imports, train_start = startup_seconds(config_path, 1 if tiny else 5)
    process_epoch = process_epoch_seconds(config_path, 1 if tiny else 3)

    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
          f"torch {torch.__version__}, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(
        f"workload: {n_train} training + {n_valid} validation images, batch {batch_size}, {repeats} interleaved repeats"
    )
    print(f"{'variant':<12} {'median s/epoch':>15} {'min':>8} {'max':>8} {'samples/s':>10}")
    for name, t in times.items():
        print(f"{name:<12} {median[name]:>15.3f} {min(t):>8.3f} {max(t):>8.3f} {n_train / median[name]:>10.0f}")
    ratios = {
        "trainer / hand loop": median["trainer"] / median["hand loop"],
        "our data / floor": median["our data"] / median["floor"],
        "torchvision / our data": median["torchvision"] / median["our data"],
        "train.py epoch / floor": process_epoch / median["floor"],
        "start-up - imports (s)": train_start - imports,
    }
    if compiled:
        ratios["trainer / compiled"] = median["trainer"] / median["compiled"]
    targets = {
        "trainer / hand loop": "<= 1.03",
        "our data / floor": "<= 1.20",
        "torchvision / our data": ">= 1.70",
        "train.py epoch / floor": "<= 1.20",
        "start-up - imports (s)": "<= 0.50",
        "trainer / compiled": "(the compile speed-up)",
    }
    print(f"imports of torch, torchvision, tensorboard: {imports:.2f} s; train.py to the end of its first step: "
          f"{train_start:.2f} s; an epoch of train.py (whole processes): {process_epoch:.2f} s")  # fmt: skip
    for name, value in ratios.items():
        print(f"{name:<24} {value:6.3f}   target {targets[name]}")
    return ratios


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a few seconds, to check the benchmark runs")
    parser.add_argument("--compile", action="store_true", help="also time the Trainer with trainer.compile")
    parser.add_argument("--images", action="store_true", help="measure the image-folder data path instead")
    args = parser.parse_args()
    if args.images:
        sys.path.insert(0, str(ROOT))
        from benchmarks import image_folder

        image_folder.main(args.tiny)
    else:
        main(args.tiny, args.compile)
