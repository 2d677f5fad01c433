"""What a sweep runs on Ray Tune: the trial (a normal run that reports every epoch), the search, the scheduler,
and the console lines that follow the trials. Imported only once the space is checked and Ray is needed.

A trial is `train.main` in a Ray worker, in a run folder of the sweep's own folder named after its Tune trial
(trial_0003). It reports each epoch's results to Tune from the `on_epoch_end` hook, which comes once the
epoch's checkpoints are written. A trial that the scheduler stops is ended by Tune inside that report, so it
keeps the checkpoint and the metrics.csv row of the last epoch it reported; its run folder is what
trials.csv and best.json are read from.
"""

import functools
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import ray
from ray import cloudpickle, tune
from ray.tune.experiment import Trial

from sweep.space import (
    CONFIG_NAME,
    RAY_FOLDER,
    Sweep,
    TrialRecord,
    format_value,
    last_results,
    read_trial,
    remove_unstarted_run,
    run_is_finished,
)
from trainer.callbacks import Callback
from utils.errors import ConfigError, UserError

PROCESS_WIDE = ("deterministic", "num_threads")  # what train.main turns on for the process and never off


class ReportToTune(Callback):
    """Sends every epoch's results to Tune: the scheduler and the search decide on them."""

    def on_epoch_end(self, trainer: Any, epoch: int, result: dict[str, float]) -> None:
        if trainer.rehearsing:  # the one-batch rehearsal before the run is not an epoch of the trial
            return
        tune.report({k: v for k, v in result.items() if not isinstance(v, list)})  # a matrix is no metric


def run_trial(values: dict[str, Any], sweep_dir: str, workdir: str) -> None:
    """One trial: a normal run of the base config with the drawn `values`, in the sweep's folder.

    It runs in `workdir`, the folder tune.py was started in (on every machine: the code is at the same path),
    so that a relative path in the config (data_dir) means what it means to train.py. A trial that a resumed
    sweep starts again continues its run from last.pth; a run that had already ended reports its last epoch
    again, without training.
    """
    import train
    from parse_config import ConfigParser
    from trainer.checkpoint import KEY_BEST_RESULT, LAST_NAME, check_resume, load_checkpoint

    os.chdir(workdir)  # Tune starts a trial in a folder of its own
    sweep = Sweep.load(sweep_dir)
    trial = Path(tune.get_context().get_trial_dir()).name  # trial_NNNN, from trial_dirname below
    run = sweep.run_folder(trial, values)
    last = run.checkpoint_dir / LAST_NAME
    if not last.is_file():
        if run.exists():  # stopped before its first checkpoint: it starts again
            remove_unstarted_run(run)
        config = ConfigParser.load(sweep.folder / CONFIG_NAME, None, sweep.trial_overrides(values))
        train.main(config, run_id=trial, callbacks=[ReportToTune()])
        return
    checkpoint = load_checkpoint(last)
    if run_is_finished(checkpoint.state):  # the sweep was killed after the run ended, before Tune saved that
        tune.report(last_results(run, list(checkpoint.state[KEY_BEST_RESULT])))
        return
    config = ConfigParser.load(None, checkpoint)
    check_resume(checkpoint, config.config)
    train.main(config, resume=checkpoint, callbacks=[ReportToTune()])


def trial_dirname(trial: Trial, first: int) -> str:
    """trial_0000, trial_0001, ...: Tune's experiment tag starts with the trial's number (from `first`)."""
    return f"trial_{int(trial.experiment_tag.split('_')[0]) - first:04d}"


def trial_name(trial: Trial) -> str:
    return Path(trial.path).name


def error_line(trial: Trial) -> str:
    """Why a trial failed, in one line: the user error it raised, or the exception's type and message."""
    staged = trial.pickled_error_file  # on the driver, until Tune copies it to the sweep's folder
    if staged is not None and Path(staged).is_file():
        with open(staged, "rb") as handle:
            error = cloudpickle.load(handle)
    else:
        error = trial.get_pickled_error()
    cause = getattr(error, "cause", None) or error  # Ray wraps the trial's exception
    if isinstance(cause, UserError):
        return str(cause)
    if cause is not None:
        text = str(cause).strip().splitlines()
        return f"{type(cause).__name__}: {text[0] if text else ''}"
    lines = [line for line in (trial.get_error() or "").splitlines() if line.strip()]
    return lines[-1] if lines else "failed (no error was recorded)"


def param_space(sweep: Sweep) -> dict[str, Any]:
    """The space as Tune's distributions."""
    draw = {
        "uniform": lambda v: tune.uniform(*v),
        "loguniform": lambda v: tune.loguniform(*v),
        "randint": lambda v: tune.randint(*v),
        "choice": lambda v: tune.choice(list(v)),
        "grid": lambda v: tune.grid_search(list(v)),
    }
    return {d.key: draw[d.kind](d.values) for d in sweep.space}


def make_tuner(sweep: Sweep) -> tune.Tuner:
    """A new sweep's Tuner: metric and mode from trainer.monitor, Ray's state in <sweep>/ray, quiet console."""
    mode, metric = sweep.monitor
    seed = sweep.config["seed"]  # the same config and space draw the same trials
    if sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search, first = OptunaSearch(seed=seed), 1
    else:
        search, first = tune.search.BasicVariantGenerator(random_state=seed), 0
    scheduler = None
    if sweep.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # A trial that reaches max_t is stopped by ASHA inside its last report, before its run has ended:
        # one epoch more than any trial runs lets every trial that is not behind end as a normal run.
        epochs = [v for d in sweep.space if d.key == "trainer.epochs" for v in d.corners()]
        epochs.append(sweep.config["trainer"]["epochs"])
        scheduler = ASHAScheduler(
            time_attr="epoch", max_t=max(epochs) + 1, grace_period=sweep.grace_period,
            reduction_factor=sweep.reduction_factor,
        )  # fmt: skip
    return tune.Tuner(
        trainable(sweep),
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, search_alg=search, scheduler=scheduler, num_samples=sweep.samples,
            trial_dirname_creator=functools.partial(trial_dirname, first=first),
            # A worker that ran a trial runs the next one, without importing torch again (seconds per trial).
            # train.main sets everything a run depends on, except these process-wide switches: a space that
            # varies one of them gets a fresh process per trial.
            reuse_actors=not any(d.key in PROCESS_WIDE for d in sweep.space),
        ),
        run_config=tune.RunConfig(
            storage_path=str(sweep.folder), name=RAY_FOLDER, verbose=0, callbacks=[Progress(sweep)]
        ),
    )  # fmt: skip


def restore_tuner(sweep: Sweep) -> tune.Tuner:
    """An interrupted sweep's Tuner: finished, stopped and failed trials stay as they are; the others run
    (from their run's last.pth, see run_trial)."""
    path = str(sweep.folder / RAY_FOLDER)
    if not tune.Tuner.can_restore(path):
        raise ConfigError(f"{sweep.folder}: Ray Tune saved no state there (stopped as it began?); start a new sweep")
    return tune.Tuner.restore(path, trainable(sweep), resume_unfinished=True, resume_errored=False)


def trainable(sweep: Sweep) -> Any:
    resources = {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial}
    trial = tune.with_parameters(run_trial, sweep_dir=str(sweep.folder), workdir=os.getcwd())
    return tune.with_resources(trial, resources)


def start_ray(address: str | None, sweep: Sweep) -> None:
    """Join the cluster at `address`, or start a local Ray on every core; refuse trials that cannot fit."""
    # Each trial's console goes to its info.log; the driver prints one line per trial instead.
    options: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.ERROR)
    if address is None:
        options.update(num_cpus=os.cpu_count(), include_dashboard=False)
    elif address != "auto":
        check_reachable(address)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise ConfigError(f"--address {address}: cannot join a Ray cluster there ({str(e).splitlines()[0]})") from None
    # Tune logs every failed trial's traceback; the driver prints its one line instead (the traceback is in
    # the trial's ray/<trial>/error.txt).
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    cluster = ray.cluster_resources()
    for flag, need, kind in (
        ("--cpus-per-trial", sweep.cpus_per_trial, "CPU"),
        ("--gpus-per-trial", sweep.gpus_per_trial, "GPU"),
    ):
        if need > cluster.get(kind, 0):
            ray.shutdown()
            raise ConfigError(f"{flag} {need:g}: the Ray cluster has {cluster.get(kind, 0):g} {kind}(s)")


def check_reachable(address: str) -> None:
    """Refuse at once a cluster address where nothing answers, or something other than Ray does: Ray itself
    retries either for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--address {address}: expected HOST:PORT of the head node (e.g. 10.0.0.1:6379), or auto")
    try:
        connection = socket.create_connection((host, int(port)), timeout=5)
    except OSError as e:
        raise ConfigError(
            f"--address {address}: nothing answers there ({e.strerror or e}); start the cluster with "
            "ray start --head on that machine, or leave --address out to start Ray here"
        ) from None
    # Ray's head and its client server speak gRPC, which is HTTP/2: a server answers a client's preface and
    # SETTINGS frame with a SETTINGS frame of its own (a 9-byte header, frame type 4 at byte 3).
    with connection:
        try:
            connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
            answer = connection.recv(9)
        except OSError:
            answer = b""
    if answer[3:4] != b"\x04":
        raise ConfigError(
            f"--address {address}: something answers there, but not Ray (it does not speak gRPC); pass the head "
            "node's port (ray start --head prints it: 6379 by default, not the dashboard's 8265), or auto"
        )


def final_trials(sweep: Sweep) -> list[Trial]:
    """The trials as Tune saved them last: an interrupted sweep's running trials are still RUNNING there."""
    return tune.ExperimentAnalysis(str(sweep.folder / RAY_FOLDER)).trials


def trial_records(sweep: Sweep) -> list[TrialRecord]:
    return [
        read_trial(sweep, trial_name(t), t.config, t.status, error_line(t) if t.status == Trial.ERROR else "")
        for t in final_trials(sweep)
    ]


class Progress(tune.Callback):
    """The sweep on the console: a line when a trial starts, ends or fails, and every `every` seconds a count
    with the best result so far."""

    def __init__(self, sweep: Sweep, every: float = 30.0) -> None:
        self.sweep = sweep
        self.every = every
        self.total: int | None = None
        self.best: tuple[float, str] | None = None  # (monitored value, trial)
        self.started = self.last_line = time.monotonic()

    def setup(self, total_num_samples: int | None = None, **info: Any) -> None:
        self.total = total_num_samples
        self.started = self.last_line = time.monotonic()

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        values = ", ".join(f"{k}={format_value(v)}" for k, v in trial.config.items())
        self._say(f"{trial_name(trial)} started: {values}")

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        mode, metric = self.sweep.monitor
        if metric not in result:
            return
        sign = 1 if mode == "min" else -1
        if self.best is None or sign * result[metric] < sign * self.best[0]:
            self.best = (result[metric], trial_name(trial))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        record = read_trial(self.sweep, trial_name(trial), trial.config, Trial.TERMINATED)
        metric = self.sweep.monitor[1]
        self._say(
            f"{record.trial} {record.status}: {record.epochs} epoch(s), "
            f"best {metric} {format_value(record.best_value(metric))}"
        )

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._say(f"{trial_name(trial)} failed: {error_line(trial)}")

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if time.monotonic() - self.last_line < self.every:
            return
        ended = sum(t.status in (Trial.TERMINATED, Trial.ERROR) for t in trials)
        running = sum(t.status == Trial.RUNNING for t in trials)
        best = (
            f"; best {self.sweep.monitor[1]} so far {format_value(self.best[0])} ({self.best[1]})" if self.best else ""
        )
        self._say(f"{ended} of {self.total or len(trials)} trials ended, {running} running{best}")

    def _say(self, line: str) -> None:
        seconds = int(time.monotonic() - self.started)
        print(f"[{seconds // 60}:{seconds % 60:02d}] {line}", flush=True)
        self.last_line = time.monotonic()
