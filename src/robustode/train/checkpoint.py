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
verifies the hashes; when the checkpoint ``latest.json`` names is missing or
damaged (or ``latest.json`` itself is), the newest earlier checkpoint that
verifies is taken instead, and the caller is told. Leftover ``*.tmp`` files
of an interrupted write are never read.

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
from ..io import fsync_dir, write_bytes_atomic, write_json_atomic

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.json"
FORMAT = "robustode-checkpoint-1"
_META = re.compile(r"^epoch-(\d+)\.json$")
_FILE = re.compile(r"^epoch-(\d+)\.(?:json|safetensors|state\.safetensors)(?:\.tmp)?$")


class CheckpointError(ValueError):
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


def names(epoch: int) -> tuple[str, str, str]:
    """(weights, state, meta) file names of the checkpoint of ``epoch``."""
    stem = f"epoch-{epoch:04d}"
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


def save_checkpoint(folder: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` into ``folder`` (tensor files, then its JSON, then ``latest.json``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights_name, state_name, meta_name = names(checkpoint.epoch)
    model_config = json.dumps(checkpoint.model_config)
    weights = save_safetensors(
        {k: _cpu(v) for k, v in checkpoint.model_state.items()},
        metadata={"format": FORMAT, "epoch": str(checkpoint.epoch), "model_config": model_config},
    )
    optimizer_tensors, optimizer_json = (
        _split_optimizer(checkpoint.optimizer_state) if checkpoint.optimizer_state else ({}, None)
    )
    rng = {f"rng.{k}": _cpu(v) for k, v in checkpoint.rng_state.items()}
    state = save_safetensors({**optimizer_tensors, **rng}, metadata={"format": FORMAT})
    write_bytes_atomic(weights, folder / weights_name)
    write_bytes_atomic(state, folder / state_name)
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
        "torch_version": torch.__version__,
        "robustode_version": __version__,
    }
    write_json_atomic(meta, folder / meta_name)
    write_json_atomic({"epoch": checkpoint.epoch, "checkpoint": meta_name}, folder / LATEST)
    fsync_dir(folder)
    checkpoint.path = folder / meta_name
    return checkpoint.path


def prune_checkpoints(folder: str | Path, keep: int) -> list[int]:
    """Delete all but the newest ``keep`` checkpoints (``keep`` 0: none) and any checkpoint file
    older than those kept; return the deleted checkpoints' epochs."""
    folder = Path(folder)
    if keep <= 0:
        return []
    epochs = sorted(_meta_epochs(folder), reverse=True)
    deleted = []
    for epoch in epochs[keep:]:
        weights_name, state_name, meta_name = names(epoch)
        for name in (meta_name, weights_name, state_name):  # the JSON first: never half-valid
            (folder / name).unlink(missing_ok=True)
        deleted.append(epoch)
    # A prune killed after a JSON went leaves its tensor files behind, which no later prune
    # would see (it lists checkpoints by their JSON): sweep every checkpoint file, *.tmp
    # included, older than the oldest checkpoint kept — none of them can be part of one.
    if epochs[:keep]:
        oldest_kept = min(epochs[:keep])
        for path in folder.iterdir():
            match = _FILE.match(path.name)
            if match and int(match.group(1)) < oldest_kept:
                path.unlink(missing_ok=True)
    return deleted


# ------------------------------------------------------------------------ reading
def _meta_epochs(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return [int(m.group(1)) for p in folder.iterdir() if (m := _META.match(p.name))]


def _read_verified(path: Path, sha256: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
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
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
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
    )


def find_checkpoint(
    folder: str | Path, log: Callable[[str], None] | None = None
) -> Checkpoint | None:
    """The checkpoint ``latest.json`` names, or else the newest one that verifies; None if
    ``folder`` holds none. ``log`` hears why a newer checkpoint was passed over."""
    folder = Path(folder)
    candidates: list[Path] = []
    pointer = folder / LATEST
    if pointer.exists():
        try:
            latest = json.loads(pointer.read_text())
            named = folder / str(latest["checkpoint"])
            if named.parent != folder or not _META.match(named.name):
                raise ValueError(f"names {named.name!r}")
            candidates.append(named)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if log:
                log(f"{pointer} is unreadable ({exc}); using the newest checkpoint that verifies")
    elif _meta_epochs(folder) and log:
        log(f"{pointer} is missing; using the newest checkpoint that verifies")
    newest_first = sorted(_meta_epochs(folder), reverse=True)
    limit = int(_META.match(candidates[0].name).group(1)) if candidates else None
    candidates += [folder / names(e)[2] for e in newest_first if limit is None or e < limit]
    first_reason = ""
    for path in candidates:
        try:
            return read_checkpoint(path)
        except CheckpointError as exc:
            first_reason = first_reason or str(exc)
            if log:
                log(f"skipping checkpoint {path.name}: {exc}")
    if candidates:
        raise CheckpointError(
            f"no checkpoint in {folder} verifies (newest: {first_reason}); "
            "start the run again with --overwrite"
        )
    return None


def _model_config_of(path: Path) -> dict[str, Any]:
    """Rebuild information from a weights file's header or a checkpoint's JSON."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
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
    weights (on the meta device) so a header naming a huge model costs nothing."""
    from ..models import create_model

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
    return {k: v.shape for k, v in model.state_dict().items()}


def check_weights(
    state: dict[str, torch.Tensor], model_config: dict[str, Any], path: str | Path
) -> None:
    """Raise a :class:`CheckpointError` listing every tensor of ``state`` that does not fit the
    model ``model_config`` names (missing, unexpected, or expected vs found shape)."""
    path = Path(path)
    problem = weights_mismatch(state, _expected_shapes(model_config, path))
    if problem:
        raise CheckpointError(
            f"{path} does not fit the model its model_config names "
            f"({model_config['name']}): {problem}"
        )


def read_weights(
    path: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(model state, model_config, the run's training config) of a run folder's latest
    checkpoint, a checkpoint's ``.json``, or a weights ``.safetensors`` file (whose training
    config is unknown: ``{}``). Verified, never unpickled, and checked to fit the model its
    ``model_config`` names (:func:`check_weights`). Anything else — a missing path, a
    pickle under any name — is a :class:`CheckpointError` saying what is accepted."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; {ACCEPTED}")
    if path.is_dir():
        folder = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
        checkpoint = find_checkpoint(folder)
        if checkpoint is None:
            raise CheckpointError(
                f"{path} holds no checkpoint ({CHECKPOINT_DIR}/epoch-N.json); {ACCEPTED}"
            )
        state, model_config, config = (
            checkpoint.model_state,
            checkpoint.model_config,
            checkpoint.config,
        )
    elif path.suffix == ".json":
        checkpoint = read_checkpoint(path)
        state, model_config, config = (
            checkpoint.model_state,
            checkpoint.model_config,
            checkpoint.config,
        )
    else:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
        _refuse_pickle(data[:8], path)
        if path.suffix != ".safetensors":
            raise CheckpointError(
                f"{path}: robustode does not read '{path.suffix}' files (.pt, .pth and .ckpt "
                f"are pickles, which it never loads since unpickling can run code); {ACCEPTED}"
            )
        state, model_config, config = _load_tensors(data, path), _model_config_of(path), {}
    check_weights(state, model_config, path)
    return state, model_config, config


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of a run folder's latest checkpoint, a checkpoint's ``.json``, or a weights
    ``.safetensors`` file: rebuilt with ``create_model`` from its ``model_config`` and loaded
    strictly, in eval mode."""
    from ..models import create_model

    state, model_config, _ = read_weights(path)
    model = create_model(**model_config)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
