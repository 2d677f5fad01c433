"""Single split vs 5-fold ensemble vs 5-fold ensemble with hflip TTA, side by side, on the bundled Kaggle-layout
digits ("is it a 3?"), scored against solution.csv: the README's and docs/cv.md's table.

python benchmarks/kaggle_cv.py [--epochs 6] [--weights resnet18.pth]

Each setting runs the shipped configs through the real commands (train.py, predict.py) in a temporary folder;
without --weights the backbone starts from random weights (nothing is downloaded).
"""

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return time.perf_counter() - started


def auroc(submission: Path, solution: Path) -> float:
    truth = {r["image_name"]: int(r["target"]) for r in csv.DictReader(solution.open())}
    written = list(csv.DictReader(submission.open()))
    return roc_auc_score([truth[r["image_name"]] for r in written], [float(r["target"]) for r in written])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--weights", default=None, help="a resnet18 state dict file (default: random weights)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, saved = Path(tmp) / "digits", Path(tmp) / "saved"
        run("-m", "data_loader.make_digit_images", str(data), "--kaggle")
        common = [f"data_loader.args.data_dir={data}", f"arch.args.weights={args.weights or 'null'}",
                  f"trainer.epochs={args.epochs}", f"save_dir={saved}", "tensorboard=false"]  # fmt: skip
        rows = []
        seconds = run("train.py", "-c", "config_kaggle.json", "--run-id", "single", *common)
        single = saved / "models" / "Kaggle_Digits_ResNet18" / "single"
        seconds += run("predict.py", "--resume", str(single), "--input", str(data / "test.csv"), "--out",
                       str(Path(tmp) / "single.csv"))  # fmt: skip
        rows.append(
            ("single split (config_kaggle.json)", auroc(Path(tmp) / "single.csv", data / "solution.csv"), seconds)
        )
        seconds = run("train.py", "-c", "config_kaggle_cv.json", "--run-id", "cv", *common)
        folds = saved / "models" / "Kaggle_Digits_ResNet18_CV" / "cv"
        for name, tta in (
            ("5-fold ensemble (config_kaggle_cv.json)", []),
            ("5-fold ensemble + hflip TTA", ["--tta", "hflip"]),
        ):
            out = Path(tmp) / f"cv{len(tta)}.csv"
            predicting = run(
                "predict.py", "--resume", str(folds), "--input", str(data / "test.csv"), "--out", str(out), *tta
            )
            rows.append((name, auroc(out, data / "solution.csv"), seconds + predicting))
        oof = (folds / "cv.json").read_text()
    print("| setting | test AUROC | seconds (train + predict) |\n|---|---|---|")
    for name, score, took in rows:
        print(f"| {name} | {score:.4f} | {took:.0f} |")
    print(f"\ncv.json: {oof}")


if __name__ == "__main__":
    main()
