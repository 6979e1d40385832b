"""The training loop: ``train(config, run_dir)``.

Every epoch E (counted from 1):

1. the lr is set from the schedule (a pure function of E);
2. the global torch RNG is seeded from (seed, E, rank) — defenses draw their
   random starts and noise from it — and the loader's batch order and
   augmentation follow from (seed, E) through ``set_epoch``;
3. each batch: ``loss, stats = defense(model, x, y)`` under autocast when
   asked, backward, SGD step; the NFE of every ODE block's solves in the
   step (the defense's attack passes included) is added up; a loss that is not
   finite stops the run (``nonfinite_loss = "stop"``: the latest checkpoint
   stays the last good state) or skips that batch's step (``"skip"``, counted
   as ``skipped_steps``; an epoch with every step skipped stops it too);
4. clean accuracy on the test split (or its first ``eval_subset`` images),
   model in eval mode, no gradients;
5. one JSON line in ``metrics.jsonl``; a checkpoint every
   ``checkpoint_every`` epochs and after the last.

Because nothing carries from one epoch to the next but the weights, the
optimiser state and the epoch number — all in the checkpoint — a resumed run
computes bitwise what an uninterrupted one does (on the same device).

Ctrl-C, SIGTERM and SIGHUP (a cluster's pre-emption) stop the run at the end
of the current step: a checkpoint of that point — weights, optimiser, every
rank's random state and the epoch's running sums — is written, and
:class:`TrainingStopped` says how to continue. The continued run is bitwise
the uninterrupted one too. The run folder is claimed for the whole run
(:class:`~robustode.outputs.OutputFolder`): a second process is refused.

The trainer does not know which defense it runs. It reads two conventions
from the defense's stats: keys ending in ``_correct`` are counts, summed over
the epoch and reported divided by the number of training images as
``…_acc`` (so ``train_correct`` becomes ``train_acc``); every other stat is
averaged over the epoch's images.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import DeviceLoader, ImageDataset, load_dataset
from ..defenses import create_defense
from ..errors import RobustodeError, on_command_line, spell
from ..models import create_model
from ..models.registry import model_entry
from ..outputs import OutputFolder
from ..signals import StopRequest, signal_name
from . import distributed
from .checkpoint import (
    CHECKPOINT_DIR,
    Checkpoint,
    find_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from .config import ConfigError, TrainConfig
from .distributed import DistContext
from .plateau import accuracies_by_epoch, plateau_epoch
from .progress import Progress
from .run_folder import (
    SUMMARY,
    append_metrics,
    clear_run,
    read_metrics,
    read_run_config,
    start_mode,
    truncate_metrics,
    write_config,
)
from .schedule import PiecewiseSchedule, make_optimizer


class TrainingError(RobustodeError, RuntimeError):
    """Training cannot go on: the loss stopped being finite."""


class TrainingStopped(KeyboardInterrupt):
    """A stop signal ended the run at a step boundary; a checkpoint of that point is kept."""

    def __init__(self, message: str, run_dir: Path, signum: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.run_dir = run_dir
        self.signum = signum

    def __str__(self) -> str:
        return self.message


def _last_good(run_dir: Path, checkpoint: Path | None) -> str:
    if checkpoint is None:
        return f"no checkpoint was written yet in {run_dir}"
    return f"the last good state is checkpoint {checkpoint.name} in {run_dir}"


@dataclass
class TrainSummary:
    """What ``train`` did: the records it wrote and where the run now stands."""

    run_dir: Path
    epochs: int  # epochs completed in all
    start_epoch: int  # the epoch this call continued from (0 for a fresh run)
    records: list[dict[str, Any]] = field(default_factory=list)  # this call's epochs
    final: dict[str, Any] | None = None  # the last epoch's record
    checkpoint: Path | None = None
    seconds: float = 0.0
    world_size: int = 1
    device: str = "cpu"
    plateau: bool = False  # stopped before config.epochs: the test accuracy had plateaued

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "epochs": self.epochs,
            "start_epoch": self.start_epoch,
            "final": self.final,
            "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
            "seconds": self.seconds,
            "world_size": self.world_size,
            "device": self.device,
            "plateau": self.plateau,
        }


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The global RNG's seed for ``epoch`` on ``rank``: well mixed, never colliding in
    practice, independent of anything that happened before the epoch."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0])


# ------------------------------------------------------------------------ set-up
def _load_data(config: TrainConfig, ctx: DistContext) -> tuple[ImageDataset, ImageDataset | None]:
    def load(split: str, download: bool) -> ImageDataset:
        return load_dataset(
            config.data, split=split, root=config.data_dir, download=download, seed=config.data_seed
        )

    # rank 0 downloads; the others read what it fetched
    train_set = load("train", config.download) if ctx.is_main else None
    ctx.barrier()
    if train_set is None:
        train_set = load("train", False)
    test_set = None
    if config.eval_subset != 0:
        test_set = load("test", False)
        if config.eval_subset is not None:
            test_set = test_set.subset(min(config.eval_subset, len(test_set)))
    return train_set, test_set


def build_model(config: TrainConfig, data: ImageDataset) -> nn.Module:
    """``create_model(config.model, seed=config.seed, **config.model_options)``, with
    ``num_classes`` and ``in_channels`` taken from the data unless given. A ``config.model``
    naming a factory (``pkg.module:function`` or ``file.py:function``) is called with
    ``model_options`` as its arguments, its parameters drawn after seeding from
    ``config.seed`` (:mod:`robustode.models.external`)."""
    from ..models.external import build_external, is_factory_spec

    if is_factory_spec(config.model):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = build_external(config.model, dict(config.model_options)).train()
        try:
            json.dumps(model.model_config)
        except (TypeError, ValueError):
            raise ConfigError(
                f"--model-opt values must be JSON values, got {config.model_options}"
            ) from None
        model.input_shape = tuple(int(v) for v in data.image_shape)
        return model
    accepted = model_entry(config.model).accepted_options()
    options = dict(config.model_options)
    for key, value in (("num_classes", data.num_classes), ("in_channels", data.image_shape[0])):
        if key not in accepted:
            continue
        if key not in options:
            options[key] = value
        elif options[key] != value:
            raise ConfigError(
                f"model option {key}={options[key]!r} does not fit the {data.name} data "
                f"({key} {value})"
            )
    model = create_model(config.model, seed=config.seed, **options)
    try:
        json.dumps(model.model_config)
    except (TypeError, ValueError):
        raise ConfigError(f"model options must be JSON values, got {model.model_config}") from None
    model.input_shape = tuple(int(v) for v in data.image_shape)
    return model


def _check_device_options(config: TrainConfig, ctx: DistContext) -> None:
    device = ctx.device
    if config.amp != "none" and device.type != "cuda":
        raise ConfigError(
            f"amp={config.amp!r} needs a CUDA device; this run is on {device} (use amp = 'none')"
        )
    # Measured with torch 2.13 on this project's CPUs: oneDNN's weight gradient of a stride-2
    # 1×1 convolution in channels-last with fewer input channels than its block (a narrow
    # ResNet shortcut) writes past its workspace and aborts the process (oneDNN issue 6035,
    # which also reports silently wrong gradients). torch.compile on the CPU gets there too:
    # inductor switches convolutions to channels-last.
    for name in ("channels_last", "compile"):
        if getattr(config, name) and device.type != "cuda":
            raise ConfigError(
                f"{name} is a CUDA option (on the CPU it can hit a oneDNN channels-last bug); "
                f"this run is on {device}"
            )
    if config.sync_batchnorm and ctx.distributed and device.type != "cuda":
        raise ConfigError("sync_batchnorm works on CUDA only (SyncBatchNorm has no CPU kernel)")
    if config.batch_size % ctx.world_size:
        raise ConfigError(
            f"batch_size {config.batch_size} must be divisible by the {ctx.world_size} processes"
        )


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda.{i}"] = s
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    if "cpu" in state:
        torch.set_rng_state(state["cpu"])
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"cuda.{i}" in state:
                torch.cuda.set_rng_state(state[f"cuda.{i}"], i)


# ------------------------------------------------------------------------ counting
class _NFECounter:
    """Adds up the forward and backward NFE of every ODE solve while ``active``."""

    def __init__(self, model: nn.Module) -> None:
        self.active = False
        self._records: list[Any] = []
        blocks = list(model.ode_blocks()) if hasattr(model, "ode_blocks") else []
        self._handles = [b.register_forward_hook(self._hook) for b in blocks]

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        record = getattr(module, "last_record", None)
        if self.active and record is not None:
            self._records.append(record)

    def take(self) -> tuple[int, int]:
        """(forward, backward) NFE since the last call; backward counts fill in during
        ``backward()``, so take after it."""
        forward = sum(r.nfe_forward for r in self._records)
        backward = sum(r.nfe_backward for r in self._records)
        self._records.clear()
        return forward, backward

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class _EpochSums:
    """Per-rank sums of one epoch, combined over ranks by :meth:`reduce`."""

    def __init__(self) -> None:
        self.samples = 0
        self.batches = 0
        self.loss = 0.0
        self.weighted: dict[str, float] = defaultdict(float)
        self.counts: dict[str, float] = defaultdict(float)
        self.nfe_forward = 0
        self.nfe_backward = 0

    def add(self, n: int, loss: float, stats: dict[str, float], nfe: tuple[int, int]) -> None:
        self.samples += n
        self.batches += 1
        self.loss += loss * n
        for key, value in stats.items():
            if key.endswith("_correct"):
                self.counts[key] += float(value)
            else:
                self.weighted[key] += float(value) * n
        self.nfe_forward += nfe[0]
        self.nfe_backward += nfe[1]

    def state(self) -> dict[str, Any]:
        """JSON values (floats round-trip exactly) to continue the epoch after a stop."""
        return {
            "samples": self.samples,
            "batches": self.batches,
            "loss": self.loss,
            "weighted": dict(self.weighted),
            "counts": dict(self.counts),
            "nfe_forward": self.nfe_forward,
            "nfe_backward": self.nfe_backward,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _EpochSums:
        sums = cls()
        sums.samples = int(state["samples"])
        sums.batches = int(state["batches"])
        sums.loss = float(state["loss"])
        sums.weighted.update({k: float(v) for k, v in state["weighted"].items()})
        sums.counts.update({k: float(v) for k, v in state["counts"].items()})
        sums.nfe_forward = int(state["nfe_forward"])
        sums.nfe_backward = int(state["nfe_backward"])
        return sums

    def reduce(self, ctx: DistContext) -> dict[str, Any]:
        parts = ctx.all_gather(
            (
                self.samples,
                self.batches,
                self.loss,
                dict(self.weighted),
                dict(self.counts),
                self.nfe_forward,
                self.nfe_backward,
            )
        )
        samples = sum(p[0] for p in parts)
        batches = parts[0][1]  # the same on every rank
        weighted: dict[str, float] = defaultdict(float)
        counts: dict[str, float] = defaultdict(float)
        for p in parts:
            for k, v in p[3].items():
                weighted[k] += v
            for k, v in p[4].items():
                counts[k] += v
        # NFE is per solve, not per image: the mean over ranks (ranks solve the same steps)
        nfe_f = sum(p[5] for p in parts) / len(parts)
        nfe_b = sum(p[6] for p in parts) / len(parts)
        stats = {k: v / samples for k, v in sorted(weighted.items())}
        stats.update(
            {k[: -len("_correct")] + "_acc": v / samples for k, v in sorted(counts.items())}
        )
        return {
            "loss": sum(p[2] for p in parts) / samples,
            "train_acc": stats.get("train_acc"),
            "nfe_forward": nfe_f,
            "nfe_backward": nfe_b,
            "nfe_forward_per_batch": nfe_f / batches,
            "nfe_backward_per_batch": nfe_b / batches,
            "batches": batches,
            "samples": samples,
            "defense": stats,
        }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DeviceLoader,
    ctx: DistContext,
    *,
    autocast: contextlib.AbstractContextManager | None = None,
    channels_last: bool = False,
) -> tuple[float | None, float | None]:
    """(clean accuracy, mean cross-entropy) over ``loader`` (None for no images), model in
    eval mode, no gradients; each rank evaluates its slice and the counts are summed."""
    was_training = model.training
    model.eval()
    # sums stay on the device: one transfer after the loop, not a host sync per batch
    correct: torch.Tensor | float = 0.0
    loss: torch.Tensor | float = 0.0
    total = 0
    try:
        for x, y in loader:
            if len(y) == 0:
                continue
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast or contextlib.nullcontext():
                logits = model(x)
            correct = correct + (logits.argmax(1) == y).sum().double()
            loss = loss + F.cross_entropy(logits.float(), y, reduction="sum").double()
            total += len(y)
    finally:
        model.train(was_training)
    parts = ctx.all_gather((float(correct), float(loss), total))
    total = sum(p[2] for p in parts)
    if total == 0:
        return None, None
    return sum(p[0] for p in parts) / total, sum(p[1] for p in parts) / total


# ------------------------------------------------------------------------ the loop
def train(
    config: TrainConfig | None,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    checkpoint: str | int = "latest",
) -> TrainSummary:
    """Train ``config`` into ``run_dir``; return what was done.

    A folder holding the same run (same config) goes on where it stopped — a
    finished one has nothing to do — as a rerun of a finished evaluation does.
    ``resume`` continues the run in ``run_dir`` from its checkpoint ``checkpoint``
    (``latest``, or ``epoch-N`` to go back to an earlier one) with ``config`` None
    (the stored one) or a config that differs only in the fields
    :data:`~robustode.train.run_folder.RESUMABLE` lists (e.g. more epochs).
    ``overwrite`` deletes a previous run's files (robustode's only) first; a folder
    holding another run is otherwise refused. ``progress``: a tqdm bar (True), one line
    per epoch (False), or a bar only on a terminal (None).

    Ctrl-C, SIGTERM and SIGHUP stop the run at the end of the current step with a
    checkpoint of that point, and raise :class:`TrainingStopped`.

    Under ``torchrun`` (WORLD_SIZE > 1) it trains with DDP; only rank 0 writes.
    Everything that can be refused — the config, the model and defense
    options, the data, the run folder — is checked before anything is written.
    """
    run_dir = Path(run_dir).absolute()  # paths built from it are the OutputFolder's
    if config is None:
        if not resume:
            raise ConfigError("train needs a config unless it resumes a run")
        config = read_run_config(run_dir)
    ctx = distributed.setup(config.device)
    folder = OutputFolder(
        run_dir, "train", overwrite=overwrite, lock=ctx.is_main, out_option="run_dir"
    )
    try:
        with StopRequest() as stop:
            return _train(
                config,
                folder,
                ctx,
                stop,
                resume=resume,
                overwrite=overwrite,
                progress=progress,
                which=checkpoint,
            )
    finally:
        folder.release()
        ctx.teardown()


def _resume_hint(run_dir: Path) -> str:
    if on_command_line():
        return f"robustode train --resume {run_dir}"
    return f"train(None, {str(run_dir)!r}, resume=True)"


def _train(
    config: TrainConfig,
    folder: OutputFolder,
    ctx: DistContext,
    stop: StopRequest,
    *,
    resume: bool,
    overwrite: bool,
    progress: bool | None,
    which: str | int,
) -> TrainSummary:
    started = time.perf_counter()
    run_dir = folder.root
    device = ctx.device
    _check_device_options(config, ctx)
    train_set, test_set = _load_data(config, ctx)
    model = build_model(config, train_set)
    defense = create_defense(
        config.defense, context={"data": config.data}, **config.defense_options
    )

    def claim() -> str:
        folder.claim()
        return start_mode(folder, config, resume=resume, overwrite=overwrite)

    mode = ctx.all_gather(ctx.on_main(claim))[0]
    if not ctx.is_main:
        folder.claim()
    show = Progress(config.epochs, enabled=ctx.is_main, bar=progress)

    checkpoint: Checkpoint | None = None
    if mode == "continue":
        checkpoint = find_checkpoint(run_dir / CHECKPOINT_DIR, log=show.log, which=which)
        if checkpoint is None:
            show.log(f"{run_dir} has no checkpoint yet; starting from epoch 1")
        elif checkpoint.epoch > config.epochs:
            raise ConfigError(
                f"{run_dir} is at epoch {checkpoint.epoch}, past epochs = {config.epochs}"
            )
        elif checkpoint.model_config != json.loads(json.dumps(model.model_config)):
            raise ConfigError(
                f"the checkpoint's model {checkpoint.model_config} is not this config's "
                f"{model.model_config}"
            )
    start_epoch = checkpoint.epoch if checkpoint is not None else 0
    position = checkpoint.position if checkpoint is not None else None
    # the records so far: the test accuracies for plateau_patience (epochs ≤ start_epoch:
    # those kept) and a finished run's last record
    records_so_far = read_metrics(run_dir) if start_epoch else []
    accuracies = accuracies_by_epoch(records_so_far, start_epoch) if start_epoch else []
    plateaued = (
        config.plateau_patience is not None
        and plateau_epoch(accuracies, config.plateau_patience) is not None
    )
    if checkpoint is not None and position is None and (start_epoch == config.epochs or plateaued):
        # a finished run (all its epochs, or stopped at its plateau): nothing to train; its
        # summary is written only if a kill came between the last checkpoint and the summary
        show.close()
        finished = TrainSummary(
            run_dir=run_dir,
            epochs=start_epoch,
            start_epoch=start_epoch,
            final=(records_so_far or [None])[-1],
            checkpoint=checkpoint.path,
            seconds=time.perf_counter() - started,
            world_size=ctx.world_size,
            device=str(device),
            plateau=plateaued,
        )
        if ctx.is_main and not (run_dir / SUMMARY).exists():
            folder.write_json(SUMMARY, finished.to_dict())
        ctx.barrier()
        return finished
    if position is not None and int(position.get("world_size", 1)) != ctx.world_size:
        raise ConfigError(
            f"{run_dir} was stopped inside epoch {start_epoch + 1} by a run of "
            f"{position.get('world_size')} process(es); continue it with as many, or go back "
            f"to a complete epoch with {spell('checkpoint')}"
        )

    if config.sync_batchnorm and ctx.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), config)
    schedule = PiecewiseSchedule.from_config(config)
    scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None
    if checkpoint is not None:
        model.load_state_dict(checkpoint.model_state)
        if checkpoint.optimizer_state is not None:
            optimizer.load_state_dict(checkpoint.optimizer_state)
        if checkpoint.schedule_state is not None:
            schedule.check_state(checkpoint.schedule_state)
        if scaler is not None and checkpoint.scaler_state:
            scaler.load_state_dict(checkpoint.scaler_state)
        _set_rng_state(_rank_rng(checkpoint.rng_state, ctx.rank))
        where = (
            f"after epoch {checkpoint.epoch}"
            if position is None
            else f"inside epoch {checkpoint.epoch + 1}, after step {position['step']}"
        )
        show.log(f"resuming {run_dir} {where} ({checkpoint.path.name})")

    augment = config.augment if config.augment is not None else config.data.startswith("cifar")
    drop_last = config.drop_last or ctx.distributed  # equal shares for every rank under DDP
    if ctx.distributed and not config.drop_last and len(train_set) % config.batch_size:
        show.log("DDP: the last partial batch of each epoch is dropped (equal shares per rank)")
    loader = DeviceLoader(
        train_set,
        config.batch_size,
        shuffle=True,
        augment=augment,
        drop_last=drop_last,
        seed=config.seed,
        device=device,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    test_loader = None
    if test_set is not None:
        test_loader = DeviceLoader(
            test_set,
            config.test_batch_size,
            device=device,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
    steps = len(loader)
    if config.max_steps_per_epoch is not None:
        steps = min(steps, config.max_steps_per_epoch)
    if steps == 0:
        raise ConfigError(
            f"an epoch has no batch: {len(train_set)} training images, batch_size "
            f"{config.batch_size}, drop_last {drop_last}"
        )

    # -- past this point files change (rank 0 only), once every rank has checked them
    ctx.barrier()
    if ctx.is_main:
        if overwrite:
            clear_run(folder)
        write_config(folder, config)
        if mode == "continue":
            # also with no checkpoint: a run killed between epoch 1's metrics line and its
            # first checkpoint redoes epoch 1, which must not be recorded twice
            truncate_metrics(folder, start_epoch)
    ctx.barrier()

    net = distributed.wrap(model, ctx)
    if config.compile:
        net = torch.compile(net)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)

    def autocast() -> contextlib.AbstractContextManager:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    def snapshot(epoch: int, position: dict[str, Any] | None, rng: dict[str, torch.Tensor]):
        return Checkpoint(
            epoch=epoch,
            model_state=model.state_dict(),
            model_config=model.model_config,
            config=config.to_dict(),
            optimizer_state=optimizer.state_dict(),
            schedule_state=schedule.state_dict(),
            scaler_state=scaler.state_dict() if scaler is not None else None,
            rng_state=rng,
            input_shape=model.input_shape,
            position=position,
        )

    nfe = _NFECounter(model)
    # A skipped step must leave no trace, but its forward pass has already moved the
    # BatchNorm running statistics (to NaN, when activations overflowed): with "skip",
    # every step starts by copying the buffers, and a skipped one puts them back.
    buffers = list(model.buffers())
    saved = [b.detach().clone() for b in buffers] if config.nonfinite_loss == "skip" else None
    records: list[dict[str, Any]] = []
    last_checkpoint = checkpoint.path if checkpoint is not None else None
    epochs_done, plateaued = start_epoch, False
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            epoch_start = time.perf_counter()
            lr = schedule.apply(optimizer, epoch)
            torch.manual_seed(epoch_seed(config.seed, epoch, ctx.rank))
            loader.set_epoch(epoch)
            net.train()
            sums = _EpochSums()
            skipped = 0
            first_step, seconds_before, continued = 0, 0.0, position is not None
            if position is not None:  # continue the epoch a stop signal ended
                mine = position["ranks"][ctx.rank]
                sums = _EpochSums.from_state(mine["sums"])
                skipped = int(mine["skipped"])
                first_step = int(position["step"])
                seconds_before = float(position["train_seconds"])
                _set_rng_state(_rank_rng(checkpoint.rng_state, ctx.rank))
                position = None
            show.start_epoch(epoch, steps)
            for step, (x, y) in enumerate(loader):
                if step >= steps:
                    break
                if step < first_step:
                    show.step(float("nan"))
                    continue
                if config.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                optimizer.zero_grad(set_to_none=True)
                if saved is not None:
                    with torch.no_grad():
                        for copy, buffer in zip(saved, buffers, strict=True):
                            copy.copy_(buffer)
                nfe.active = True
                with autocast():
                    loss, stats = defense(net, x, y)
                loss_value = float(loss.detach())
                if not ctx.all_true(math.isfinite(loss_value)):
                    nfe.active = False
                    nfe.take()  # the solves of a step that is not taken count nowhere
                    if saved is not None:
                        with torch.no_grad():
                            for copy, buffer in zip(saved, buffers, strict=True):
                                buffer.copy_(copy)
                        skipped += 1
                        show.step(loss_value)
                    else:
                        bad = next(v for v in ctx.all_gather(loss_value) if not math.isfinite(v))
                        raise TrainingError(
                            f"the loss is {bad} at epoch {epoch}, step {step + 1}; training "
                            f"stopped and {_last_good(run_dir, last_checkpoint)} "
                            f"({spell('nonfinite_loss')} would skip such steps)"
                        )
                else:
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        loss.backward()
                        optimizer.step()
                    nfe.active = False
                    sums.add(len(y), loss_value, stats, nfe.take())
                    show.step(loss_value)
                done = step + 1
                if done < steps and ctx.flags_any(stop.requested)[0]:
                    seconds = seconds_before + time.perf_counter() - epoch_start
                    last_checkpoint = _save_stopped(
                        folder, ctx, snapshot, epoch, done, sums, skipped, seconds
                    )
                    raise TrainingStopped(
                        f"training stopped by {signal_name(stop.signal)} inside epoch {epoch} "
                        f"after step {done} of {steps}; a checkpoint of that point is in "
                        f"{last_checkpoint.parent}; continue with: {_resume_hint(run_dir)}",
                        run_dir,
                        stop.signal,
                    )
            train_seconds = seconds_before + time.perf_counter() - epoch_start
            if sums.batches == 0:  # every step skipped: nothing was learnt, nothing to log
                raise TrainingError(
                    f"the loss was not finite at any of the {skipped} steps of epoch {epoch}; "
                    f"training stopped and {_last_good(run_dir, last_checkpoint)}"
                )
            record: dict[str, Any] = {"epoch": epoch, "lr": lr}
            record.update(sums.reduce(ctx))
            record["skipped_steps"] = skipped
            test_acc = test_loss = None
            if test_loader is not None:
                test_acc, test_loss = evaluate(
                    model,
                    test_loader,
                    ctx,
                    autocast=autocast(),
                    channels_last=config.channels_last,
                )
            record["test_acc"] = test_acc
            record["test_loss"] = test_loss
            if config.trace_eq16:
                record["eq16_ratio"] = _eq16_probe(model, train_set, config, device)
            record["train_seconds"] = train_seconds
            record["seconds"] = seconds_before + time.perf_counter() - epoch_start
            if config.plateau_patience is not None:
                # every rank holds the same (gathered) test accuracy, so all stop together
                accuracies.append(test_acc)
                plateaued = plateau_epoch(accuracies, config.plateau_patience) == epoch
                record["plateau"] = plateaued
            stopping = epoch < config.epochs and ctx.flags_any(stop.requested)[0]
            if ctx.is_main:
                append_metrics(folder, record)
                # a continued epoch always ends in a checkpoint: the stopped one is then done;
                # so does the epoch at which the plateau stops the run (its last)
                due = epoch % config.checkpoint_every == 0 or epoch == config.epochs or plateaued
                if due or stopping or continued:
                    last_checkpoint = save_checkpoint(
                        run_dir / CHECKPOINT_DIR,
                        snapshot(epoch, None, _rng_state()),
                        writer=folder,
                    )
                    prune_checkpoints(
                        run_dir / CHECKPOINT_DIR, config.keep_checkpoints, writer=folder
                    )
            records.append(record)
            epochs_done = epoch
            show.end_epoch(record)
            if plateaued:
                show.log(
                    f"test accuracy has not risen for {config.plateau_patience} epochs: "
                    f"stopping after epoch {epoch} of at most {config.epochs}"
                )
                break
            if stopping:
                raise TrainingStopped(
                    f"training stopped by {signal_name(stop.signal)} after epoch {epoch} of "
                    f"{config.epochs}; its checkpoint is kept; continue with: "
                    f"{_resume_hint(run_dir)}",
                    run_dir,
                    stop.signal,
                )
    finally:
        show.close()
        nfe.remove()

    final = records[-1] if records else (read_metrics(run_dir) or [None])[-1]
    summary = TrainSummary(
        run_dir=run_dir,
        epochs=epochs_done,
        start_epoch=start_epoch,
        records=records,
        final=final,
        checkpoint=last_checkpoint,
        seconds=time.perf_counter() - started,
        world_size=ctx.world_size,
        device=str(device),
        plateau=plateaued,
    )
    if ctx.is_main:
        folder.write_json(SUMMARY, summary.to_dict())
    ctx.barrier()
    return summary


def _eq16_probe(model: nn.Module, data: ImageDataset, config: TrainConfig, device) -> float:
    """LAD eq. 16 on the first batch of training images, in eval mode (the running
    statistics stay as they are, so a resumed run is still bitwise the same)."""
    from ..attacks.base import model_mode
    from ..defenses.lad import eq16_ratio

    probe = data.subset(min(config.batch_size, len(data)))
    x, y = probe.float_images().to(device), probe.labels.to(device)
    with model_mode(model, "eval"):
        return eq16_ratio(model, x, y)


def _rank_rng(state: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """A rank's random state from a checkpoint: its own (``rank.R.*``) where a stop saved
    every rank's, else the one state rank 0 saved."""
    prefix = f"rank{rank}."
    mine = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return mine or {k: v for k, v in state.items() if not k.startswith("rank")}


def _save_stopped(
    folder: OutputFolder,
    ctx: DistContext,
    snapshot: Any,
    epoch: int,
    step: int,
    sums: _EpochSums,
    skipped: int,
    seconds: float,
) -> Path:
    """Write the checkpoint of a run stopped inside ``epoch`` after ``step`` steps: every
    rank's running sums and random state, so the continued epoch is bitwise the same."""
    ranks = ctx.all_gather(
        ({"sums": sums.state(), "skipped": skipped}, {k: v.cpu() for k, v in _rng_state().items()})
    )
    rng = {f"rank{r}.{k}": v for r, (_, state) in enumerate(ranks) for k, v in state.items()}
    position = {
        "step": step,
        "world_size": ctx.world_size,
        "train_seconds": seconds,
        "ranks": [info for info, _ in ranks],
    }
    path = folder.root / CHECKPOINT_DIR
    written = None
    if ctx.is_main:
        written = save_checkpoint(path, snapshot(epoch - 1, position, rng), writer=folder)
    ctx.barrier()
    return written or path
