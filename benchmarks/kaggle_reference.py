"""The Kaggle recipe two ways on the same data, the same split and the same start, side by side: the template
(config_kaggle.json, then predict.py) and a plain PyTorch script of the kind users bring from notebooks (what a
100-line Lightning script does, without Lightning, which this project does not depend on). Prints the test AUROC
of both submissions against the answers.

    python benchmarks/kaggle_reference.py            # about two minutes on 2 CPU cores
"""

import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a script in benchmarks/ imports the project like train.py does


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def reference(data: Path, weights: Path, config: dict) -> dict[str, float]:
    """The notebook's loop: PIL images, resnet18 with a one-logit head, BCE with pos_weight and label smoothing,
    AdamW, OneCycleLR per batch, the backbone frozen for epoch 1 then at a tenth of the rate, bf16, the best
    epoch by validation AUROC; returns its test predictions by image name."""
    import numpy as np
    import torch
    import torchvision
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    from base.base_data_loader import split_indices  # the template's split, so both see the same images

    args, epochs = config["data_loader"]["args"], config["trainer"]["epochs"]
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    def load(folder: Path, names: list[str]) -> torch.Tensor:
        pixels = np.stack([np.asarray(Image.open(folder / f"{n}.png").convert("RGB")) for n in names])
        return (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std

    rows = read_rows(data / "train.csv")
    names, targets = [r["image_name"] for r in rows], torch.tensor([float(r["target"]) for r in rows])
    parts = split_indices(names, args["validation_split"], args["test_split"], args.get("split_seed", 0))
    images = load(data / "train", names)
    torch.manual_seed(config["seed"])
    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.fc = torch.nn.Linear(512, 1)
    backbone = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
    lr = config["optimizer"]["args"]["lr"]
    optimizer = torch.optim.AdamW(
        [{"params": model.fc.parameters(), "lr": lr}, {"params": backbone, "lr": lr * 0.1}], weight_decay=0.01
    )
    batch, train_index = args["batch_size"], parts["train"]
    steps = (len(train_index) + batch - 1) // batch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, [lr, lr * 0.1], epochs=epochs, steps_per_epoch=steps)
    loss_args = config["loss"]["args"]
    smoothing, pos_weight = loss_args["label_smoothing"], torch.tensor(loss_args["pos_weight"])
    best, best_state = -1.0, None
    for epoch in range(1, epochs + 1):
        for p in backbone:
            p.requires_grad_(epoch >= config["finetune"]["unfreeze_epoch"])
        model.train()
        for module in model.modules():  # frozen BatchNorm keeps its statistics, as train_bn: false does
            if isinstance(module, torch.nn.BatchNorm2d) and epoch < config["finetune"]["unfreeze_epoch"]:
                module.eval()
        order = train_index[torch.randperm(len(train_index))]
        for start in range(0, len(order), batch):
            index = order[start : start + batch]
            target = targets[index].unsqueeze(1) * (1 - smoothing) + 0.5 * smoothing
            with torch.autocast("cpu", dtype=torch.bfloat16):
                output = model(images[index])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(output.float(), target, pos_weight=pos_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            scores = model(images[parts["valid"]]).float()[:, 0]
        auroc = roc_auc_score(targets[parts["valid"]].numpy(), scores.numpy())
        if auroc > best:
            best, best_state = auroc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    test_names = [r["image_name"] for r in read_rows(data / "test.csv")]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = torch.sigmoid(model(load(data / "test", test_names)).float()[:, 0])
    return dict(zip(test_names, scores.tolist(), strict=True))


def template(data: Path, weights: Path, work: Path) -> dict[str, float]:
    """config_kaggle.json through train.py, then predict.py's submission; returns it by image name."""
    overrides = [f"data_loader.args.data_dir={data}", f"arch.args.weights={weights}",
                 f"save_dir={work / 'saved'}", "tensorboard=false", "verbosity=0"]  # fmt: skip
    train = [sys.executable, str(ROOT / "train.py"), "-c", str(ROOT / "config_kaggle.json"), "--run-id", "bench"]
    subprocess.run([*train, *overrides], check=True, cwd=ROOT, capture_output=True)
    run = work / "saved" / "models" / "Kaggle_Digits_ResNet18" / "bench"
    out = work / "submission.csv"
    predict = [sys.executable, str(ROOT / "predict.py"), "-r", str(run), "-i", str(data / "test.csv"), "-o", str(out)]
    subprocess.run(predict, check=True, cwd=ROOT, capture_output=True)
    return {r["image_name"]: float(r["target"]) for r in read_rows(out)}


def main() -> None:
    import torch
    import torchvision
    from sklearn.metrics import roc_auc_score

    from data_loader.make_digit_images import write_kaggle_layout

    work = Path(tempfile.mkdtemp(prefix="kaggle-"))
    data, weights = work / "kaggle_digits", work / "resnet18.pth"
    write_kaggle_layout(data)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)  # the same "pretrained" start for both
    config = json.loads((ROOT / "config_kaggle.json").read_text())
    config["seed"] = 0
    answers = {r["image_name"]: int(r["target"]) for r in read_rows(data / "solution.csv")}
    for name, run in (("template", lambda: template(data, weights, work)),
                      ("plain PyTorch script", lambda: reference(data, weights, config))):  # fmt: skip
        started = time.perf_counter()
        scores = run()
        auroc = roc_auc_score([answers[n] for n in scores], list(scores.values()))
        print(f"{name:<22} test AUROC {auroc:.4f}   ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
