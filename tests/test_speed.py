"""Speed features, checked for behaviour (never for time: these machines are shared and noisy)."""

import warnings

import pytest
import torch

from conftest import ROOT, run_script, train
from logger.run_folder import LAST_NAME
from trainer.checkpoint import KEY_STATE_DICT, load_checkpoint

pytestmark = pytest.mark.e2e  # subprocesses and whole runs: pytest -m e2e
# benchmarks/ measures the template itself: it stays in the template's repository, and new_project.py leaves it out.
needs_benchmarks = pytest.mark.skipif(not (ROOT / "benchmarks").is_dir(), reason="a project made by new_project.py")


@needs_benchmarks
def test_the_benchmark_runs_and_prints_every_ratio():
    result = run_script(str(ROOT / "benchmarks" / "throughput.py"), "--tiny", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for line in ("trainer / hand loop", "our data / floor", "torchvision / our data", "train.py epoch / floor",
                 "start-up - imports (s)"):  # fmt: skip
        assert line in result.stdout
    assert "machine: " in result.stdout and "median s/epoch" in result.stdout


@needs_benchmarks
def test_the_image_folder_benchmark_runs_and_prints_every_ratio():
    result = run_script(str(ROOT / "benchmarks" / "throughput.py"), "--images", "--tiny", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for line in ("our folder / floor", "per batch / floor", "torchvision / our folder", "first start (decode"):
        assert line in result.stdout


def test_compile_keeps_plain_parameter_names(tiny_config, tmp_path):
    tiny_config["trainer"].update(epochs=1, len_epoch=3, compile=True)
    result, run = train(tiny_config, tmp_path, "compiled")
    assert result["last"]["epoch"] == 1
    keys = set(load_checkpoint(run.checkpoint_dir / LAST_NAME).state[KEY_STATE_DICT])
    assert keys and not any("_orig_mod" in k for k in keys)


def test_a_run_without_tensorboard_or_digits_loads_neither(tmp_path):
    code = (
        "import sys, json; import train;"
        "config, arguments, _ = train.parse_args(['-c', sys.argv[1]]); train.main(config, **arguments);"
        "print(json.dumps(['sklearn' in sys.modules, 'torch.utils.tensorboard' in sys.modules]))"
    )
    config = (ROOT / "config.json").read_text().replace('"tensorboard": true', '"tensorboard": false')
    config = config.replace('"saved/"', f'"{tmp_path / "saved"}/"').replace('"epochs": 20', '"epochs": 1')
    (tmp_path / "config.json").write_text(config)
    result = run_script("-c", code, str(tmp_path / "config.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    sklearn_loaded, tensorboard_loaded = __import__("json").loads(result.stdout.strip().splitlines()[-1])
    assert sklearn_loaded and not tensorboard_loaded  # the digits example needs scikit-learn, not TensorBoard


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_steps_do_not_synchronize_with_the_host(tiny_config, tmp_path):
    """The number of host syncs must not grow with the number of steps (only log steps and epoch ends)."""

    def syncs(len_epoch: int) -> int:
        tiny_config["trainer"].update(epochs=1, len_epoch=len_epoch, log_step=10_000)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train(tiny_config, tmp_path, f"sync{len_epoch}")
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(20) == syncs(5)
