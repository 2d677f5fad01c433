"""What a sweep runs on Ray Tune: the trial (train.main in a Ray worker, reporting every epoch), the search,
the scheduler, and the console lines that follow the trials. Imported only once the space is checked."""

import csv
import logging
import os
import shlex
import shutil
import signal
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
    as_text,
    check_ray_state,
    read_trial,
    sign_ray_state,
    state_key,
)
from trainer.callbacks import Callback
from trainer.checkpoint import run_is_finished
from trainer.options import TrainerOptions
from utils.errors import ConfigError, TrainingInterrupted, UserError, first_line
from utils.util import read_json

PROCESS_WIDE = ("deterministic", "num_threads")  # what train.main turns on for the process and never off


def run_sweep(sweep: Sweep, resume: bool, address: str | None) -> list[TrialRecord]:
    """Run the sweep's trials (resuming: those Tune has not ended) on Ray; one record per trial."""
    key = state_key()  # this machine's, for Ray's state: read (or made) before anything starts
    if resume:  # before Ray starts and reads its state: it unpickles that state
        check_ray_state(sweep.folder, key)
    print(f"Sweep {sweep.folder}: {sweep.search} search, {sweep.scheduler} scheduler; starting Ray", flush=True)
    start_ray(address, sweep)
    try:
        if not resume:  # only now: everything is valid and Ray runs
            sweep.folder.mkdir(parents=True)
            sweep.save()
        tuner = make_tuner(sweep, resume)
        # Tune stops on Ctrl-C: it saves its state, the trials keep their checkpoints; kill (SIGTERM) does the same
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
        try:
            tuner.fit()
        finally:
            signal.signal(signal.SIGTERM, previous)
        records = []  # while Ray runs: a trial's error is read through it
        for t in tune.ExperimentAnalysis(str(sweep.folder / RAY_FOLDER)).trials:  # as Tune saved them last: one
            error = error_line(t) if t.status == Trial.ERROR else ""  # an interrupted trial is saved PENDING: not ended
            records.append(read_trial(sweep, Path(t.path).name, t.config, t.status == Trial.TERMINATED, error))
    except KeyboardInterrupt:  # a second Ctrl-C: Tune stops at once, with the state it saved last
        raise TrainingInterrupted(
            f"stopped at once; continue the sweep with: python tune.py --resume {shlex.quote(str(sweep.folder))}",
            signal.SIGINT,
        ) from None
    finally:
        ray.shutdown()
        if sweep.folder.is_dir():
            sign_ray_state(sweep.folder, key)  # what a --resume will unpickle: as this run leaves it, nothing else
    return records


class ReportToTune(Callback):
    """Sends every epoch's results to Tune: the scheduler and the search decide on them."""

    def on_epoch_end(self, trainer: Any, epoch: int, result: dict[str, float]) -> None:
        if trainer.rehearsing:  # the one-batch rehearsal before the run is not an epoch of the trial
            return
        tune.report({k: v for k, v in result.items() if not isinstance(v, list)})  # a matrix is no metric


def run_trial(values: dict[str, Any], sweep_dir: str, workdir: str) -> None:
    """One trial: a normal run of the base config with the drawn `values`, in the sweep's folder, from `workdir`
    (where tune.py started: a relative data_dir means what it means to train.py), or resumed from its last.pth."""
    import train
    from logger.run_folder import LAST_NAME
    from parse_config import ConfigParser
    from trainer.checkpoint import KEY_BEST_RESULT, check_resume, load_checkpoint

    os.chdir(workdir)  # Tune starts a trial in a folder of its own
    sweep = Sweep.load(sweep_dir)
    trial = Path(tune.get_context().get_trial_dir()).name  # trial_NNNN, from trial_dirname below
    run = sweep.run_folder(trial, values)
    last = run.checkpoint_dir / LAST_NAME
    if not last.is_file():  # a new trial, or one stopped before its first checkpoint: it starts again
        if any(run.checkpoint_dir.glob("*.pth")):
            raise ConfigError(f"{run.checkpoint_dir}: has checkpoints but no last.pth; remove the folder to rerun it")
        shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
        shutil.rmtree(run.log_dir, ignore_errors=True)
        config = ConfigParser.load(sweep.folder / CONFIG_NAME, None, sweep.trial_overrides(values))
        train.main(config, run_id=trial, callbacks=[ReportToTune()])
        return
    checkpoint = load_checkpoint(last)
    if run_is_finished(checkpoint):  # the sweep was killed after the run ended, before Tune saved that:
        with (run.log_dir / "metrics.csv").open(newline="") as handle:  # report its last epoch again
            row = list(csv.DictReader(handle))[-1]
        keys = [k for k in checkpoint.state[KEY_BEST_RESULT] if row.get(k, "") != ""]
        tune.report({k: int(row[k]) if k == "epoch" else float(row[k]) for k in keys})
        return
    config = ConfigParser.load(None, checkpoint)
    check_resume(checkpoint, config.config)
    train.main(config, resume=checkpoint, callbacks=[ReportToTune()])


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
        return f"{type(cause).__name__}: {first_line(cause)}"
    lines = [line for line in str(trial.get_error() or "").splitlines() if line.strip()]  # the traceback's text
    return lines[-1] if lines else "failed (no error was recorded)"


def make_tuner(sweep: Sweep, resume: bool) -> tune.Tuner:
    """The sweep's Tuner: metric and mode from trainer.monitor, Ray's state in <sweep>/ray, quiet console.
    Resuming, ended and failed trials stay as they are; the others run again (see run_trial)."""
    trial = tune.with_parameters(run_trial, sweep_dir=str(sweep.folder), workdir=os.getcwd())
    trainable = tune.with_resources(trial, {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial})
    state = str(sweep.folder / RAY_FOLDER)
    if resume and not tune.Tuner.can_restore(state):
        raise ConfigError(f"{sweep.folder}: Ray Tune saved no state there (stopped as it began?); start a new sweep")
    if resume:
        return tune.Tuner.restore(state, trainable, resume_unfinished=True, resume_errored=False)
    mode, metric = sweep.monitor
    seed = sweep.config["seed"]  # the same config and space draw the same trials
    if sweep.search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch  # imported only here: Optuna is optional

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "A new study created" line: the sweep says it
        search, first = OptunaSearch(seed=seed), 1  # Optuna's trials are numbered from 1
    else:
        search, first = tune.search.BasicVariantGenerator(random_state=seed), 0
    scheduler = None
    if sweep.scheduler == "asha":
        # A trial that reaches max_t is stopped by ASHA inside its last report, before its run has ended:
        # one epoch more than any trial runs lets every trial that is not behind end as a normal run.
        epochs = [v for d in sweep.space if d.key == "trainer.epochs" for v in d.corners()]
        max_t = max([*epochs, TrainerOptions.of(sweep.config).epochs]) + 1
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="epoch", max_t=max_t, grace_period=sweep.grace_period, reduction_factor=sweep.reduction_factor
        )
    lists = {"choice": tune.choice, "grid": tune.grid_search}  # the ranges: tune.uniform(low, high) and the like
    draw = {
        d.key: lists[d.kind](list(d.values)) if d.kind in lists else getattr(tune, d.kind)(*d.values)
        for d in sweep.space
    }
    return tune.Tuner(
        trainable,
        param_space=draw,
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, search_alg=search, scheduler=scheduler, num_samples=sweep.samples,
            trial_dirname_creator=lambda trial: f"trial_{int(trial.experiment_tag.split('_')[0]) - first:04d}",
            # A worker that ran a trial runs the next one, without importing torch again (seconds per trial).
            # train.main sets everything a run depends on, except these process-wide switches: a space that
            # varies one of them gets a fresh process per trial.
            reuse_actors=not any(d.key in PROCESS_WIDE for d in sweep.space),
        ),
        run_config=tune.RunConfig(
            storage_path=str(sweep.folder), name=RAY_FOLDER, verbose=0, callbacks=[Progress(sweep)]
        ),
    )  # fmt: skip


def start_ray(address: str | None, sweep: Sweep) -> None:
    """Join the cluster at `address`, or start a local Ray on every core; refuse trials that cannot fit."""
    # Each trial's console goes to its info.log; the driver prints one line per trial instead.
    options: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.ERROR)
    if address is None:
        options.update(num_cpus=os.cpu_count(), include_dashboard=False)
    elif address != "auto":  # Ray itself retries for minutes where nothing answers, or something else does
        check_reachable(address)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise ConfigError(f"--address {address}: cannot join a Ray cluster there ({first_line(e)})") from None
    # Tune logs every failed trial's traceback; the driver prints its one line (the traceback is in ray/<trial>).
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    cluster = ray.cluster_resources()
    for kind, need in (("CPU", sweep.cpus_per_trial), ("GPU", sweep.gpus_per_trial)):
        if need > cluster.get(kind, 0):
            ray.shutdown()
            raise ConfigError(
                f"--{kind.lower()}s-per-trial {need:g}: the Ray cluster has {cluster.get(kind, 0):g} {kind}(s)"
            )


def check_reachable(address: str) -> None:
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


class Progress(tune.Callback):
    """The sweep on the console: a line when a trial starts, ends or fails, and every 30 s a count with the best
    result so far. A trial the scheduler stops never reaches its run's end, where a run writes its config and
    results to TensorBoard's HPARAMS tab: they are written here, so that it is compared with the rest."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep

    def setup(self, total_num_samples: int | None = None, **info: Any) -> None:  # a resumed sweep's too
        self.total, self.started, self.last_line = total_num_samples, time.monotonic(), time.monotonic()

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        values = ", ".join(f"{k}={as_text(v, 4)}" for k, v in trial.config.items())
        self._say(f"{Path(trial.path).name} started: {values}")

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        from logger.visualization import Writer, write_hparams

        record = read_trial(self.sweep, Path(trial.path).name, trial.config, ended=True)
        metric = self.sweep.monitor[1]
        best = as_text(record.best and record.best[metric], 4)
        self._say(f"{record.trial} {record.status}: {record.epochs} epoch(s), best {metric} {best}")
        if record.status != "stopped" or record.best is None:
            return
        config = read_json(record.run_folder / "config.json")
        if config["tensorboard"]:
            writer = Writer(self.sweep.run_folder(record.trial, record.values).log_dir)
            last = {k: trial.last_result[k] for k in record.best if k in trial.last_result}
            write_hparams(writer, config, {"last": last, "best": record.best})
            writer.close()

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._say(f"{Path(trial.path).name} failed: {error_line(trial)}")

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if time.monotonic() - self.last_line < 30:
            return
        mode, metric = self.sweep.monitor  # Tune keeps each trial's min and max of every metric it reported
        scored = [(t.metric_analysis[metric][mode], Path(t.path).name) for t in trials if metric in t.metric_analysis]
        best = (min if mode == "min" else max)(scored, default=None)
        ended = sum(t.status in (Trial.TERMINATED, Trial.ERROR) for t in trials)
        running = sum(t.status == Trial.RUNNING for t in trials)
        so_far = f"; best {metric} so far {as_text(best[0], 4)} ({best[1]})" if best else ""
        self._say(f"{ended} of {self.total or len(trials)} trials ended, {running} running{so_far}")

    def _say(self, line: str) -> None:
        seconds = int(time.monotonic() - self.started)
        print(f"[{seconds // 60}:{seconds % 60:02d}] {line}", flush=True)
        self.last_line = time.monotonic()
