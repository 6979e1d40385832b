"""Checkpoints: safetensors for tensors, JSON for everything else, never a pickle.

A checkpoint of epoch E in ``RUN_DIR/checkpoints/`` is three files, each
written to a temporary name, flushed, fsynced and renamed into place:

- ``epoch-000E.safetensors`` — the model's parameters and buffers; its header
  metadata holds the ``model_config`` that rebuilds the model, so this file
  alone is enough for :func:`load_model`;
- ``epoch-000E.state.safetensors`` — the optimiser's tensors (momentum buffers)
  and the random generators' states;
- ``epoch-000E.json`` — written after the two above: the epoch, the run's
  config, the optimiser's other state, the lr schedule, the loss scaler, and
  the SHA-256 of both tensor files.

``latest.json`` names the newest checkpoint and is written last. Loading
verifies the hashes. Which checkpoint of a run folder is read is explicit —
``latest`` (the one ``latest.json`` names; the newest complete one when a
crash came before the first ``latest.json``), ``best`` (the highest test
accuracy in ``metrics.jsonl`` among those kept) or ``epoch-N`` — and a
damaged one is an error naming the file and how to choose another, never a
silent fallback to an older epoch. Leftover temporary files of an interrupted
write are never read.

Nothing here unpickles: a file is read only as safetensors or JSON. A pickle
(``torch.save``'s ``.pt``/``.pth``/``.ckpt``, zipped or not), whatever its
name, is recognised by its first bytes and refused with a
:class:`CheckpointError`, since unpickling it would run whatever code it
names. Weights that do not fit the model their ``model_config`` names
(missing, unexpected or mis-shaped tensors) are refused with the list.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .. import __version__
from ..errors import InputError, spell
from ..io import (
    SMALL_FILE_BYTES,
    fsync_dir,
    make_folder,
    read_bytes_limited,
    write_bytes_atomic,
    write_json_atomic,
)

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.json"
FORMAT = "robustode-checkpoint-1"
_META = re.compile(r"^epoch-(\d+)\.json$")
_FILE = re.compile(
    r"^epoch-(\d+)\.(?:json|safetensors|state\.safetensors)(?:\.\d+\.[0-9a-f]{8})?(?:\.tmp)?$"
)
_STOPPED = re.compile(r"^epoch-(\d+)-step-\d+\.(?:json|safetensors|state\.safetensors)")
_WHICH = re.compile(r"^(?:epoch-?)?(\d+)$")
# the largest tensor file robustode reads (a WRN-34-10 with its optimiser state is 0.4 GB)
TENSOR_FILE_BYTES = 16 << 30
CHOICES = "latest, best or epoch-N"


class CheckpointError(InputError):
    """A checkpoint that is missing, damaged or not a robustode checkpoint."""


ACCEPTED = (
    "accepted: a run folder, a checkpoint .json or a weights .safetensors written by robustode"
)
# names in an error message per kind of mismatch; the rest are counted
_LIST_AT_MOST = 12


@dataclass
class Checkpoint:
    """Everything a run needs to continue after ``epoch``, as plain tensors and JSON values."""

    epoch: int
    model_state: dict[str, torch.Tensor]
    model_config: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None
    schedule_state: dict[str, Any] | None = None
    scaler_state: dict[str, Any] | None = None
    rng_state: dict[str, torch.Tensor] = field(default_factory=dict)
    path: Path | None = None  # the .json file it was read from or written to
    input_shape: tuple[int, ...] | None = None  # (C, H, W) of the images it was trained on
    # a checkpoint taken inside epoch + 1 (a stopped run): {"step": k, ...} where the epoch's
    # first k steps are done; None for the checkpoint at the end of ``epoch``
    position: dict[str, Any] | None = None


class _PlainWriter:
    """Writes files atomically without an output folder's manifest (direct API use)."""

    def write_bytes(self, path: Path, data: bytes) -> Path:
        make_folder(Path(path).parent)
        write_bytes_atomic(data, Path(path))
        return Path(path)

    def write_json(self, path: Path, obj: Any) -> Path:
        write_json_atomic(obj, Path(path))
        return Path(path)

    def remove(self, path: Path) -> bool:
        Path(path).unlink(missing_ok=True)
        return True


def names(epoch: int, step: int | None = None) -> tuple[str, str, str]:
    """(weights, state, meta) file names of the checkpoint of ``epoch`` (or, with ``step``,
    of the stopped epoch ``epoch + 1`` after ``step`` steps)."""
    stem = f"epoch-{epoch:04d}" if step is None else f"epoch-{epoch:04d}-step-{step:06d}"
    return f"{stem}.safetensors", f"{stem}.state.safetensors", f"{stem}.json"


# ------------------------------------------------------------------------ writing
def _cpu(t: torch.Tensor) -> torch.Tensor:
    # a copy: safetensors refuses tensors that share storage, and the caller trains on
    return t.detach().to("cpu", copy=True).contiguous()


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser state_dict as (tensors, JSON), tensors named optimizer.<param>.<key>."""
    tensors: dict[str, torch.Tensor] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        out: dict[str, Any] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                name = f"optimizer.{index}.{key}"
                tensors[name] = _cpu(value)
                out[key] = {"tensor": name}
            else:
                out[key] = value
        per_param[str(index)] = out
    return tensors, {"state": per_param, "param_groups": state["param_groups"]}


def _join_optimizer(tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for index, entries in saved["state"].items():
        state[int(index)] = {
            key: tensors[value["tensor"]]
            if isinstance(value, dict) and "tensor" in value
            else value
            for key, value in entries.items()
        }
    return {"state": state, "param_groups": saved["param_groups"]}


def save_checkpoint(folder: str | Path, checkpoint: Checkpoint, *, writer: Any = None) -> Path:
    """Write ``checkpoint`` into ``folder`` (tensor files, then its JSON, then ``latest.json``).

    ``writer`` — the run's :class:`~robustode.outputs.OutputFolder` — records every file in
    the folder's manifest; without one the files are written atomically all the same.
    """
    folder = Path(folder)
    writer = writer or _PlainWriter()
    step = None if checkpoint.position is None else int(checkpoint.position["step"])
    weights_name, state_name, meta_name = names(checkpoint.epoch, step)
    model_config = json.dumps(checkpoint.model_config)
    header = {"format": FORMAT, "epoch": str(checkpoint.epoch), "model_config": model_config}
    if checkpoint.input_shape is not None:
        header["input_shape"] = json.dumps(list(checkpoint.input_shape))
    weights = save_safetensors(
        {k: _cpu(v) for k, v in checkpoint.model_state.items()}, metadata=header
    )
    optimizer_tensors, optimizer_json = (
        _split_optimizer(checkpoint.optimizer_state) if checkpoint.optimizer_state else ({}, None)
    )
    rng = {f"rng.{k}": _cpu(v) for k, v in checkpoint.rng_state.items()}
    state = save_safetensors({**optimizer_tensors, **rng}, metadata={"format": FORMAT})
    writer.write_bytes(folder / weights_name, weights)
    writer.write_bytes(folder / state_name, state)
    meta = {
        "format": FORMAT,
        "epoch": checkpoint.epoch,
        "files": {
            "weights": {"name": weights_name, "sha256": hashlib.sha256(weights).hexdigest()},
            "state": {"name": state_name, "sha256": hashlib.sha256(state).hexdigest()},
        },
        "model_config": checkpoint.model_config,
        "config": checkpoint.config,
        "optimizer": optimizer_json,
        "schedule": checkpoint.schedule_state,
        "scaler": checkpoint.scaler_state,
        "rng": sorted(checkpoint.rng_state),
        "input_shape": None if checkpoint.input_shape is None else list(checkpoint.input_shape),
        "position": checkpoint.position,
        "torch_version": torch.__version__,
        "robustode_version": __version__,
    }
    writer.write_json(folder / meta_name, meta)
    if step is None:
        pointer = {"epoch": checkpoint.epoch, "checkpoint": meta_name}
    else:  # the newest complete epoch stays 'latest'; a resume goes on from the stopped one
        pointer = _read_pointer(folder) or {}
        pointer = {k: pointer[k] for k in ("epoch", "checkpoint") if k in pointer}
        pointer["stopped"] = meta_name
    writer.write_json(folder / LATEST, pointer)
    fsync_dir(folder)
    checkpoint.path = folder / meta_name
    return checkpoint.path


def _read_pointer(folder: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(read_bytes_limited(folder / LATEST, SMALL_FILE_BYTES, what="pointer"))
    except (InputError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def prune_checkpoints(folder: str | Path, keep: int, *, writer: Any = None) -> list[int]:
    """Delete all but the newest ``keep`` checkpoints (``keep`` 0: none), any checkpoint file
    older than those kept and the checkpoints of stopped epochs now complete; return the
    deleted checkpoints' epochs."""
    folder = Path(folder)
    writer = writer or _PlainWriter()
    epochs = sorted(_meta_epochs(folder), reverse=True)
    deleted = []
    if keep > 0:
        for epoch in epochs[keep:]:
            weights_name, state_name, meta_name = names(epoch)
            for name in (meta_name, weights_name, state_name):  # the JSON first: never half-valid
                writer.remove(folder / name)
            deleted.append(epoch)
    # A prune killed after a JSON went leaves its tensor files behind, which no later prune
    # would see (it lists checkpoints by their JSON): sweep every checkpoint file, temporary
    # files included, older than the oldest checkpoint kept — none can be part of one. A
    # stopped epoch's checkpoint (epoch-E-step-K) is done with once epoch E+1 is complete.
    kept = epochs[:keep] if keep > 0 else epochs
    newest = max(epochs, default=None)
    oldest_kept = min(kept, default=None)
    for path in list(folder.iterdir()) if folder.is_dir() else []:
        stopped = _STOPPED.match(path.name)
        if stopped and newest is not None and int(stopped.group(1)) < newest:
            writer.remove(path)
            continue
        match = _FILE.match(path.name)
        if match and oldest_kept is not None and int(match.group(1)) < oldest_kept:
            writer.remove(path)
    return deleted


# ------------------------------------------------------------------------ reading
def _meta_epochs(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return [int(m.group(1)) for p in folder.iterdir() if (m := _META.match(p.name))]


def _read(path: Path, limit: int, what: str) -> bytes:
    try:
        return read_bytes_limited(path, limit, what=what)
    except InputError as exc:
        raise CheckpointError(str(exc)) from None


def _read_verified(path: Path, sha256: str) -> bytes:
    data = _read(path, TENSOR_FILE_BYTES, "checkpoint tensor file")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"{path} is damaged (its SHA-256 is not the one recorded)")
    return data


def _pickle_kind(head: bytes) -> str | None:
    """What a file starting with ``head`` is when it is a pickle container, else None."""
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (the format torch.save writes, holding a pickle)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO opcode, protocol 2–5
        return "a pickle (as torch.save or pickle.dump write)"
    return None


def _refuse_pickle(head: bytes, path: Path) -> None:
    kind = _pickle_kind(head)
    if kind is not None:
        raise CheckpointError(
            f"{path} is {kind}; robustode never unpickles a file, since unpickling can run "
            f"code; {ACCEPTED}"
        )


def _load_tensors(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    _refuse_pickle(data[:8], path)
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a safetensors file ({exc}); {ACCEPTED}") from None


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify the checkpoint whose JSON file is ``path`` (tensors on the CPU)."""
    path = Path(path)
    data = _read(path, SMALL_FILE_BYTES, "checkpoint .json")
    _refuse_pickle(data[:8], path)
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not a checkpoint .json (not UTF-8 JSON: {exc}); {ACCEPTED}"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file; {ACCEPTED}")
    try:
        files = meta["files"]
        # a bare file name beside the .json: with_name refuses anything with a separator
        weights_path = path.with_name(str(files["weights"]["name"]))
        state_path = path.with_name(str(files["state"]["name"]))
        weights_sha, state_sha = str(files["weights"]["sha256"]), str(files["state"]["sha256"])
        epoch = int(meta["epoch"])
        model_config = meta["model_config"]
        shape = meta.get("input_shape")
        input_shape = None if shape is None else tuple(int(v) for v in shape)
        position = meta.get("position")
        if position is not None and not isinstance(position, dict):
            raise TypeError("position must be a table")
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is a damaged {FORMAT} file ({type(exc).__name__}: {exc} in its fields)"
        ) from None
    model_state = _load_tensors(_read_verified(weights_path, weights_sha), weights_path)
    state = _load_tensors(_read_verified(state_path, state_sha), state_path)
    rng = {k[len("rng.") :]: v for k, v in state.items() if k.startswith("rng.")}
    try:
        optimizer = _join_optimizer(state, meta["optimizer"]) if meta.get("optimizer") else None
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is a damaged {FORMAT} file (its optimizer state: {exc})"
        ) from None
    return Checkpoint(
        epoch=epoch,
        model_state=model_state,
        model_config=model_config,
        config=meta.get("config") or {},
        optimizer_state=optimizer,
        schedule_state=meta.get("schedule"),
        scaler_state=meta.get("scaler"),
        rng_state=rng,
        path=path,
        input_shape=input_shape,
        position=position,
    )


def list_checkpoints(folder: str | Path) -> list[int]:
    """The epochs of the complete-epoch checkpoints in ``folder`` (by their JSON), oldest first."""
    return sorted(_meta_epochs(Path(folder)))


def _best_epoch(folder: Path, epochs: list[int]) -> int:
    """The kept epoch with the highest test accuracy in the run's ``metrics.jsonl``."""
    metrics = folder.parent / "metrics.jsonl"
    scores: dict[int, float] = {}
    if metrics.is_file():
        text = _read(metrics, 1 << 30, "metrics file").decode("utf-8", "replace")
        for line in text.splitlines():
            try:
                record = json.loads(line)
                epoch, acc = int(record["epoch"]), record.get("test_acc")
            except (ValueError, KeyError, TypeError):
                continue
            if epoch in epochs and isinstance(acc, int | float):
                scores[epoch] = float(acc)
    if not scores:
        raise CheckpointError(
            f"{folder.parent} records no test accuracy for its checkpoints "
            f"({', '.join(f'epoch-{e}' for e in epochs)}), so none is 'best'; choose one with "
            f"{spell('checkpoint')}"
        )
    top = max(scores.values())
    return max(e for e, a in scores.items() if a == top)  # the newest of equals


def checkpoint_file(folder: str | Path, which: str | int = "latest") -> Path:
    """The JSON file of the checkpoint ``which`` names in ``folder``: ``latest`` (the one
    ``latest.json`` names, or the newest complete checkpoint when there is no
    ``latest.json`` yet), ``best`` or ``epoch-N`` (also ``N``)."""
    folder = Path(folder)
    epochs = list_checkpoints(folder)
    shown = ", ".join(f"epoch-{e}" for e in epochs) or "none"
    text = str(which).strip().lower()
    if text == "latest":
        pointer = folder / LATEST
        if pointer.exists() or pointer.is_symlink():
            latest = _read_pointer(folder)
            named = None if latest is None else latest.get("checkpoint")
            if not isinstance(named, str) or not _META.match(named):
                raise CheckpointError(
                    f"{pointer} is damaged (it names no checkpoint); robustode does not guess "
                    f"which one is the latest: choose one with {spell('checkpoint')} "
                    f"(checkpoints: {shown})"
                )
            return folder / named
        if not epochs:
            raise CheckpointError(f"{folder} holds no checkpoint (epoch-N.json); {ACCEPTED}")
        return folder / names(epochs[-1])[2]
    if not epochs:
        raise CheckpointError(f"{folder} holds no checkpoint (epoch-N.json); {ACCEPTED}")
    if text == "best":
        return folder / names(_best_epoch(folder, epochs))[2]
    match = _WHICH.match(text)
    if match is None:
        raise CheckpointError(f"checkpoint must be {CHOICES}, got {which!r}")
    epoch = int(match.group(1))
    if epoch not in epochs:
        raise CheckpointError(f"{folder} has no checkpoint epoch-{epoch}; it holds: {shown}")
    return folder / names(epoch)[2]


def select_checkpoint(folder: str | Path, which: str | int = "latest") -> Checkpoint:
    """Read and verify the checkpoint ``which`` names (:func:`checkpoint_file`). A damaged
    one is a :class:`CheckpointError` naming it and the way to choose another — robustode
    never falls back to an older checkpoint on its own."""
    folder = Path(folder)
    path = checkpoint_file(folder, which)
    try:
        return read_checkpoint(path)
    except CheckpointError as exc:
        others = [e for e in reversed(list_checkpoints(folder)) if names(e)[2] != path.name]
        hint = (
            f"choose another with {spell('checkpoint')}, e.g. epoch-{others[0]} "
            f"(checkpoints: {', '.join(f'epoch-{e}' for e in others)})"
            if others
            else "no other checkpoint exists"
        )
        raise CheckpointError(
            f"checkpoint {path.name} of {folder} cannot be used: {exc}; robustode never falls "
            f"back to another checkpoint on its own: {hint}"
        ) from None


def find_checkpoint(
    folder: str | Path, log: Callable[[str], None] | None = None, *, which: str | int = "latest"
) -> Checkpoint | None:
    """The checkpoint a run continues from: ``which`` (default ``latest``), or, where the run
    was stopped inside an epoch after its latest checkpoint, that stopped state. None when
    ``folder`` holds no checkpoint yet. ``log`` hears which one was taken when it is not
    the one ``latest.json`` names."""
    folder = Path(folder)
    if not list_checkpoints(folder) and not (folder / LATEST).exists():
        return None
    if str(which).lower() == "latest":
        pointer = _read_pointer(folder) or {}
        stopped = pointer.get("stopped")
        if isinstance(stopped, str) and _STOPPED.match(stopped):
            checkpoint = read_checkpoint(folder / stopped)
            if log:
                log(f"continuing the stopped epoch {checkpoint.epoch + 1} ({stopped})")
            return checkpoint
        if not (folder / LATEST).exists() and log:
            log(
                f"{folder / LATEST} is missing (the run stopped before writing it); taking the "
                "newest complete checkpoint"
            )
    return select_checkpoint(folder, which)


def _header_of(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


def _model_config_of(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """Rebuild information from a weights file's header."""
    if metadata.get("format") != FORMAT or "model_config" not in metadata:
        raise CheckpointError(
            f"{path} carries no robustode model_config in its header, so the model it holds "
            f"is unknown; {ACCEPTED}"
        )
    try:
        return json.loads(metadata["model_config"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: its model_config is not JSON ({exc})") from None


def _shape(shape: Any) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_AT_MOST])
    more = len(items) - _LIST_AT_MOST
    return shown + (f" and {more} more" if more > 0 else "")


def weights_mismatch(state: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> str | None:
    """What keeps ``state`` from loading strictly into a model whose state has the shapes
    ``expected`` (missing, unexpected and mis-shaped tensors, each listed), or None."""
    # sorted: a safetensors file does not keep the order its tensors were saved in
    missing = sorted(k for k in expected if k not in state)
    extra = sorted(k for k in state if k not in expected)
    misshaped = [
        f"{k} expected {_shape(expected[k])}, found {_shape(state[k].shape)}"
        for k in sorted(expected)
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} tensor(s): {_listed(missing)}")
    if extra:
        parts.append(f"unexpected {len(extra)} tensor(s): {_listed(extra)}")
    if misshaped:
        parts.append(f"{len(misshaped)} tensor(s) of the wrong shape: {_listed(misshaped)}")
    return "; ".join(parts) or None


def _expected_shapes(model_config: Any, path: Path) -> dict[str, torch.Size]:
    """The state shapes of the model ``model_config`` names, built without allocating its
    weights (on the meta device) so a header naming a huge model costs nothing — and refused
    beyond the parameter limit before anything real is built."""
    from ..models import create_model
    from ..models.registry import MAX_PARAMETERS, parameter_count

    if not isinstance(model_config, dict) or not isinstance(model_config.get("name"), str):
        raise CheckpointError(
            f"{path}: its model_config must be a table naming the model ('name'), "
            f"got {model_config!r}"
        )
    try:
        with torch.device("meta"):
            model = create_model(**model_config)
    except ValueError as exc:  # ModelConfigError: an unknown model or option
        raise CheckpointError(f"{path} names a model robustode cannot build: {exc}") from None
    count = parameter_count(model)
    if count > MAX_PARAMETERS:
        raise CheckpointError(
            f"{path} names a model of {count:,} parameters, more than the limit of "
            f"{MAX_PARAMETERS:,}; robustode does not build it"
        )
    return {k: v.shape for k, v in model.state_dict().items()}


def check_weights(
    state: dict[str, torch.Tensor], model_config: dict[str, Any], path: str | Path
) -> None:
    """Raise a :class:`CheckpointError` listing every tensor of ``state`` that does not fit the
    model ``model_config`` names (missing, unexpected, or expected vs found shape)."""
    path = Path(path)
    if "factory" in model_config:
        # a user's factory is imported only when the user names it again: the weights are
        # checked against the model it builds then (evaluate.target)
        return
    problem = weights_mismatch(state, _expected_shapes(model_config, path))
    if problem:
        raise CheckpointError(
            f"{path} does not fit the model its model_config names "
            f"({model_config['name']}): {problem}"
        )


@dataclass
class StoredWeights:
    """A model's weights as stored, with what rebuilds it and where they came from."""

    state: dict[str, torch.Tensor]
    model_config: dict[str, Any]
    config: dict[str, Any]  # the run's training config ({} for a bare weights file)
    file: Path  # the file the weights were read from
    epoch: int | None = None
    input_shape: tuple[int, ...] | None = None

    def describe(self) -> dict[str, Any]:
        """Where the weights came from, as a report records it."""
        return {"file": str(self.file), "epoch": self.epoch}


def read_weights(path: str | Path, *, checkpoint: str | int = "latest") -> StoredWeights:
    """The weights of a run folder's checkpoint ``checkpoint`` (``latest``, ``best`` or
    ``epoch-N``), of a checkpoint's ``.json``, or of a weights ``.safetensors`` file (whose
    training config is unknown: ``{}``). Verified, never unpickled, and checked to fit the
    model its ``model_config`` names (:func:`check_weights`). Anything else — a missing path,
    a pickle under any name, a damaged checkpoint — is a :class:`CheckpointError` saying what
    is accepted."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        raise CheckpointError(f"{path} does not exist; {ACCEPTED}")
    if path.is_dir():
        folder = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
        if not list_checkpoints(folder):
            raise CheckpointError(
                f"{path} holds no checkpoint ({CHECKPOINT_DIR}/epoch-N.json); {ACCEPTED}"
            )
        found = select_checkpoint(folder, checkpoint)
        stored = StoredWeights(
            found.model_state, found.model_config, found.config, found.path, found.epoch,
            found.input_shape,
        )  # fmt: skip
    elif path.suffix == ".json":
        found = read_checkpoint(path)
        stored = StoredWeights(
            found.model_state, found.model_config, found.config, found.path, found.epoch,
            found.input_shape,
        )  # fmt: skip
    else:
        data = _read(path, TENSOR_FILE_BYTES, "weights file")
        _refuse_pickle(data[:8], path)
        if path.suffix != ".safetensors":
            raise CheckpointError(
                f"{path}: robustode does not read '{path.suffix}' files (.pt, .pth and .ckpt "
                f"are pickles, which it never loads since unpickling can run code); {ACCEPTED}"
            )
        tensors = _load_tensors(data, path)
        header = _header_of(path)
        stored = StoredWeights(
            tensors, _model_config_of(path, header), {}, path, _int_or_none(header.get("epoch")),
            _shape_or_none(header.get("input_shape")),
        )  # fmt: skip
    check_weights(stored.state, stored.model_config, stored.file)
    return stored


def _int_or_none(text: Any) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _shape_or_none(text: Any) -> tuple[int, ...] | None:
    try:
        return tuple(int(v) for v in json.loads(text))
    except (TypeError, ValueError):
        return None


def load_model(
    path: str | Path, *, device: str | torch.device = "cpu", checkpoint: str | int = "latest"
) -> torch.nn.Module:
    """The model of a run folder's checkpoint (``latest``, ``best`` or ``epoch-N``), a
    checkpoint's ``.json``, or a weights ``.safetensors`` file: rebuilt with ``create_model``
    from its ``model_config`` and loaded strictly, in eval mode. ``model.input_shape`` is the
    (C, H, W) it was trained on, where the checkpoint records it."""
    from ..models import create_model

    stored = read_weights(path, checkpoint=checkpoint)
    model = create_model(**stored.model_config)
    model.load_state_dict(stored.state, strict=True)
    model.input_shape = stored.input_shape
    return model.to(device).eval()
