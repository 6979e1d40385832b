"""robustode.data: real CIFAR-10 files, official-format CIFAR-100 files, downloads, safety,
digits, .npz, and the DeviceLoader's determinism, augmentation and rank slicing."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from robustode.data import (
    DataError,
    DeviceLoader,
    ImageDataset,
    list_datasets,
    load_dataset,
)
from robustode.data import cifar as cifar_module
from robustode.data.cifar import load_cifar
from robustode.data.digits import split_indices

from .cifar_subset import CIFAR_DIR


def need_cifar_subset() -> Path:
    if not (CIFAR_DIR / "test_batch").is_file():
        pytest.skip(
            f"no CIFAR-10 subset at {CIFAR_DIR} (../shared/data, or set ROBUSTODE_CIFAR10_DIR)"
        )
    return CIFAR_DIR


def raw_batch(path: Path) -> dict:
    """The standard way to read an official batch, independent of robustode."""
    with path.open("rb") as f:
        return pickle.load(f, encoding="latin1")


def write_batch(path: Path, data: np.ndarray, labels: dict[str, list[int]], keys_as_bytes: bool):
    """One batch file in the official layout (protocol 2, as the official files use)."""
    batch = {"batch_label": "testing batch", "data": data, **labels}
    batch["filenames"] = [f"img_{i}.png" for i in range(len(data))]
    if keys_as_bytes:  # what Python 2's str keys look like to Python 3
        batch = {k.encode(): v for k, v in batch.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar10_folder(folder: Path, n: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny CIFAR-10 folder (n images per file); returns each file's data."""
    rng = np.random.default_rng(seed)
    written = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        write_batch(folder / name, data, {"labels": list(range(n))}, keys_as_bytes=False)
        written[name] = data
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a"] * 10}, protocol=2))
    return written


def make_tar_gz(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return hashlib.md5(path.read_bytes()).hexdigest()


def serve_cifar10(monkeypatch, archive: Path, md5: str) -> None:
    """Point the CIFAR-10 source at a local archive through a file:// URL."""
    source = dataclasses.replace(cifar_module.SOURCES["cifar10"], url=archive.as_uri(), md5=md5)
    monkeypatch.setitem(cifar_module.SOURCES, "cifar10", source)


# ------------------------------------------------------------------ registry
def test_list_datasets_names_the_four_datasets():
    assert list_datasets() == ["cifar10", "cifar100", "digits", "npz"]


def test_unknown_dataset_or_split_is_an_error_listing_the_accepted_ones():
    with pytest.raises(DataError, match="cifar10, cifar100, digits, npz"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="train, test"):
        load_dataset("digits", split="val")


# ------------------------------------------------------------------ CIFAR-10, real files
def test_cifar10_subset_sizes_dtype_and_first_test_labels():
    folder = need_cifar_subset()
    train = load_dataset("cifar10", split="train", root=folder)
    test = load_dataset("cifar10", split="test", root=folder)
    assert (len(train), len(test)) == (5085, 1017)
    assert train.image_shape == test.image_shape == (3, 32, 32)
    assert train.images.dtype == test.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and train.num_classes == 10
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_cifar10_pixels_and_labels_equal_the_raw_batches_reshaped():
    folder = need_cifar_subset()
    train = load_dataset("cifar10", root=folder)
    raw = raw_batch(folder / "data_batch_3")  # the third file: images 2·1017 … 3·1017
    n = len(raw["labels"])
    expected = torch.from_numpy(raw["data"].reshape(n, 3, 32, 32))
    assert torch.equal(train.images[2 * n : 3 * n], expected)
    assert train.labels[2 * n : 3 * n].tolist() == raw["labels"]
    test = load_dataset("cifar10", split="test", root=folder)
    assert torch.equal(
        test.images, torch.from_numpy(raw_batch(folder / "test_batch")["data"]).view(-1, 3, 32, 32)
    )


def test_cifar10_root_may_be_the_folder_or_its_parent():
    folder = need_cifar_subset()
    a = load_dataset("cifar10", split="test", root=folder)
    b = load_dataset("cifar10", split="test", root=str(folder.parent))
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_missing_cifar_folder_names_the_folder_and_mentions_download(tmp_path):
    with pytest.raises(DataError, match="--download") as err:
        load_dataset("cifar10", root=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value)
    with pytest.raises(DataError, match="cifar-100-python"):
        load_dataset("cifar100", split="test", root=tmp_path)


def test_incomplete_cifar_folder_names_the_missing_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_folder(folder)
    (folder / "data_batch_4").unlink()
    assert len(load_dataset("cifar10", split="test", root=tmp_path)) == 4
    with pytest.raises(DataError, match="lacks data_batch_4"):
        load_dataset("cifar10", split="train", root=tmp_path)


def test_truncated_cifar_batch_is_a_data_error_naming_the_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_folder(folder, n=50)
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        load_dataset("cifar10", split="test", root=tmp_path)
    assert str(path) in str(err.value)


class _RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _RunsEval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("payload", [_RunsShell, _RunsEval], ids=["os.system", "builtins.eval"])
def test_malicious_pickle_in_a_batch_file_is_refused_and_never_runs(tmp_path, payload):
    marker = tmp_path / "marker"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"data": payload(marker), b"labels": [0]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset("cifar10", split="test", root=folder)
    assert not marker.exists()


# ------------------------------------------------------------------ CIFAR-100, official format
def test_cifar100_official_format_with_fine_and_coarse_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    rng = np.random.default_rng(1)
    written = {}
    for name, n in [("train", 6), ("test", 4)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine, coarse = rng.integers(0, 100, n).tolist(), rng.integers(0, 20, n).tolist()
        write_batch(
            folder / name,
            data,
            {"fine_labels": fine, "coarse_labels": coarse},
            keys_as_bytes=True,
        )
        written[name] = (data, fine, coarse)
    meta = {b"fine_label_names": [b"x"] * 100, b"coarse_label_names": [b"y"] * 20}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))

    for split, (data, fine, coarse) in written.items():
        ds = load_dataset("cifar100", split=split, root=tmp_path)
        assert ds.num_classes == 100 and ds.labels.tolist() == fine
        assert torch.equal(ds.images, torch.from_numpy(data).view(-1, 3, 32, 32))
        coarse_ds = load_cifar("cifar100", split=split, root=folder, label_mode="coarse")
        assert coarse_ds.num_classes == 20 and coarse_ds.labels.tolist() == coarse


# ------------------------------------------------------------------ download
def test_download_fetches_checks_and_extracts_the_official_layout(tmp_path, monkeypatch):
    src = tmp_path / "src" / "cifar-10-batches-py"
    written = write_cifar10_folder(src)
    members = {f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in sorted(src.iterdir())}
    archive = tmp_path / "server" / "cifar-10-python.tar.gz"
    serve_cifar10(monkeypatch, archive, make_tar_gz(archive, members))
    root = tmp_path / "data"

    ds = load_dataset("cifar10", split="train", root=root, download=True)
    expected = np.concatenate([written[f"data_batch_{i}"] for i in range(1, 6)])
    assert torch.equal(ds.images, torch.from_numpy(expected).view(-1, 3, 32, 32))
    assert sorted(p.name for p in root.iterdir()) == [
        ".robustode",  # the manifest of the files robustode wrote there
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]
    # a second call finds the folder and touches no network
    monkeypatch.setattr(urllib.request, "urlopen", None)
    assert len(load_dataset("cifar10", split="test", root=root, download=True)) == 4


def test_download_with_a_wrong_md5_is_an_error_and_leaves_no_file(tmp_path, monkeypatch):
    archive = tmp_path / "server" / "cifar-10-python.tar.gz"
    make_tar_gz(archive, {"cifar-10-batches-py/test_batch": b"not what was promised"})
    serve_cifar10(monkeypatch, archive, "0" * 32)
    root = tmp_path / "data"
    with pytest.raises(DataError, match="MD5"):
        load_dataset("cifar10", split="test", root=root, download=True)
    assert not root.exists()  # the folder the download made goes with it


def test_download_without_network_names_the_folder_to_provide(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DataError, match="without a network, provide the folder") as err:
        load_dataset("cifar10", root=tmp_path, download=True)
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("members", "links", "why"),
    [
        ({"cifar-10-batches-py/../../escape.txt": b"x"}, {}, "unsafe path"),
        ({"/tmp/robustode-absolute.txt": b"x"}, {}, "unsafe path"),
        ({}, {"cifar-10-batches-py/test_batch": "/etc/passwd"}, "links"),
    ],
    ids=["dot-dot", "absolute", "symlink"],
)
def test_archive_with_path_traversal_or_links_is_refused(
    tmp_path, monkeypatch, members, links, why
):
    archive = tmp_path / "server" / "cifar-10-python.tar.gz"
    serve_cifar10(monkeypatch, archive, make_tar_gz(archive, members, links))
    root = tmp_path / "a" / "data"
    with pytest.raises(DataError, match=why):
        load_dataset("cifar10", split="test", root=root, download=True)
    assert not (tmp_path / "escape.txt").exists()
    assert not (root / "cifar-10-batches-py").exists()


# ------------------------------------------------------------------ digits
def test_digits_sizes_range_and_a_stratified_partition():
    from sklearn.datasets import load_digits

    sk = load_digits()
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert train.image_shape == (1, 8, 8) and train.images.dtype == torch.float32
    assert train.images.min() == 0 and train.images.max() == 1 and train.num_classes == 10
    train_idx, test_idx = split_indices(sk.target, seed=0)
    assert np.intersect1d(train_idx, test_idx).size == 0
    assert np.array_equal(np.union1d(train_idx, test_idx), np.arange(1797))
    assert torch.allclose(test.images[:, 0].double(), torch.from_numpy(sk.images[test_idx] / 16))
    assert test.labels.tolist() == sk.target[test_idx].tolist()
    for c in range(10):  # every class keeps its share
        assert (test.labels == c).sum() == int(0.2 * (sk.target == c).sum() + 0.5)


def test_digits_split_depends_only_on_seed():
    a, b = (
        load_dataset("digits", split="test", seed=3),
        load_dataset("digits", split="test", seed=3),
    )
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    torch.manual_seed(123), np.random.seed(123)  # the global RNGs play no part
    c = load_dataset("digits", split="test", seed=3)
    assert torch.equal(a.images, c.images)
    d = load_dataset("digits", split="test", seed=4)
    assert len(d) == len(a) and not torch.equal(a.images, d.images)


# ------------------------------------------------------------------ npz
def test_npz_uint8_nhwc_and_float_nchw_both_load(tmp_path):
    rng = np.random.default_rng(0)
    x8 = rng.integers(0, 256, (5, 8, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", x=x8, y=np.array([0, 1, 2, 1, 0]))
    ds = load_dataset("npz", root=tmp_path / "u8.npz")
    assert ds.images.dtype == torch.uint8 and ds.image_shape == (3, 8, 6)
    assert torch.equal(ds.images[2, :, 4, 1], torch.from_numpy(x8[2, 4, 1]))
    assert ds.labels.tolist() == [0, 1, 2, 1, 0] and ds.num_classes == 3

    xf = rng.random((4, 1, 8, 8))  # float64 in [0, 1)
    np.savez(tmp_path / "f.npz", x=xf, y=np.array([1, 1, 0, 1], dtype=np.int32))
    ds = load_dataset("npz", root=tmp_path / "f.npz")
    assert ds.images.dtype == torch.float32 and ds.image_shape == (1, 8, 8)
    assert torch.allclose(ds.images, torch.from_numpy(xf).float())
    assert ds.labels.dtype == torch.int64


def test_npz_split_convention(tmp_path):
    x = np.zeros((3, 4, 4, 1), np.uint8)
    np.savez(tmp_path / "one.npz", x=x, y=np.array([0, 1, 0]))
    # a single set serves both splits
    assert len(load_dataset("npz", split="test", root=tmp_path / "one.npz")) == 3
    np.savez(
        tmp_path / "two.npz", x=x, y=np.array([0, 1, 0]), x_test=x[:2], y_test=np.array([4, 0])
    )
    train = load_dataset("npz", split="train", root=tmp_path / "two.npz")
    test = load_dataset("npz", split="test", root=tmp_path / "two.npz")
    assert (len(train), len(test)) == (3, 2)
    assert train.num_classes == test.num_classes == 5  # both splits' labels count
    np.savez(tmp_path / "test_only.npz", x_test=x, y_test=np.array([0, 1, 0]))
    with pytest.raises(DataError, match="no train split"):
        load_dataset("npz", split="train", root=tmp_path / "test_only.npz")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((2, 4, 4, 3), np.int64), "y": [0, 1]}, "dtype int64; accepted"),
        ({"x": np.full((2, 3, 4, 4), 1.5), "y": [0, 1]}, r"must lie in \[0, 1\]"),
        ({"x": np.full((2, 3, 4, 4), np.nan), "y": [0, 1]}, "NaN or infinite"),
        ({"x": np.zeros((2, 3, 8, 8), np.uint8), "y": [0, 1]}, "looks NCHW"),
        ({"x": np.zeros((2, 8, 8, 3), np.float32), "y": [0, 1]}, "looks NHWC"),
        ({"x": np.zeros((2, 8, 8), np.uint8), "y": [0, 1]}, "4-D"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": [0.0, 1.0]}, "must be 2 integers"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": [0, 1, 2]}, "must be 2 integers"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": [0, -1]}, "negative"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8)}, "must hold arrays x and y"),
        ({"x": np.array([None, {}], dtype=object), "y": [0, 1]}, "without pickled objects"),
    ],
    ids=[
        "int-images", "float-above-1", "nan", "uint8-nchw", "float-nhwc", "3d",
        "float-labels", "label-count", "negative-label", "no-labels", "object-array",
    ],
)  # fmt: skip
def test_npz_bad_dtype_range_or_shape_is_a_data_error(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    with pytest.raises(DataError, match=message):
        load_dataset("npz", root=tmp_path / "bad.npz")


def test_npz_without_a_file_says_what_root_must_be(tmp_path):
    with pytest.raises(DataError, match="needs root="):
        load_dataset("npz")
    with pytest.raises(DataError, match=r"no \.npz file at"):
        load_dataset("npz", root=tmp_path / "absent.npz")


# ------------------------------------------------------------------ ImageDataset
def test_image_dataset_subset_float_images_and_to():
    x = torch.arange(5 * 3 * 2 * 2, dtype=torch.uint8).view(5, 3, 2, 2)
    ds = ImageDataset(x, torch.tensor([0, 1, 2, 3, 4]), 5, "toy")
    sub = ds.subset(3)
    assert len(sub) == 3 and torch.equal(sub.images, x[:3]) and sub.labels.tolist() == [0, 1, 2]
    assert torch.equal(ds.float_images(), x.float() / 255)
    assert ds.to("cpu").images.dtype == torch.uint8
    with pytest.raises(DataError, match="subset size"):
        ds.subset(6)
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.1"):
        ImageDataset(x, torch.tensor([0, 1, 2, 3, 4]), 2, "toy")
    with pytest.raises(DataError, match="int64"):
        ImageDataset(x, torch.tensor([0, 1, 2, 3, 4], dtype=torch.int32), 5, "toy")


# ------------------------------------------------------------------ DeviceLoader
def indexed_dataset(n: int, shape=(3, 16, 12), uint8: bool = False, seed: int = 0) -> ImageDataset:
    """Random images whose label is their own index, so a batch says where it came from."""
    g = torch.Generator().manual_seed(seed)
    if uint8:
        x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    else:
        x = torch.rand((n, *shape), generator=g)
    return ImageDataset(x, torch.arange(n), n, "indexed")


def epoch_batches(loader: DeviceLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def test_shuffled_epoch_covers_every_index_exactly_once():
    loader = DeviceLoader(indexed_dataset(1037), 100, shuffle=True, augment=True)
    labels = torch.cat([y for _, y in epoch_batches(loader, 0)])
    assert sorted(labels.tolist()) == list(range(1037))
    assert labels.tolist() != list(range(1037))


def test_batches_depend_only_on_seed_and_epoch():
    ds = indexed_dataset(300)

    def run(seed: int, epoch: int, global_seed: int):
        torch.manual_seed(global_seed)
        loader = DeviceLoader(ds, 64, shuffle=True, augment=True, seed=seed)
        return epoch_batches(loader, epoch)

    def same(a, b):
        return all(
            torch.equal(xa, xb) and torch.equal(ya, yb)
            for (xa, ya), (xb, yb) in zip(a, b, strict=True)
        )

    reference = run(seed=7, epoch=3, global_seed=0)
    assert same(reference, run(seed=7, epoch=3, global_seed=1))  # a fresh loader, other global seed
    assert not same(reference, run(seed=7, epoch=4, global_seed=0))
    assert not same(reference, run(seed=8, epoch=3, global_seed=0))
    # resuming: a loader that went through epochs 0..2 gives the same epoch 3 as a fresh one
    loader = DeviceLoader(ds, 64, shuffle=True, augment=True, seed=7)
    for e in range(3):
        epoch_batches(loader, e)
    assert same(reference, epoch_batches(loader, 3))
    # the loader never draws from the global generator
    state = torch.get_rng_state()
    epoch_batches(loader, 5)
    assert torch.equal(state, torch.get_rng_state())


def test_augmented_images_are_flipped_windows_of_the_zero_padded_input():
    n, pad = 1200, 4
    # uint8, so the per-batch conversion is checked too; not square, so rows and columns
    # cannot be swapped unnoticed
    ds = indexed_dataset(n, shape=(3, 16, 12), uint8=True)
    loader = DeviceLoader(ds, 128, shuffle=True, augment=True, padding=pad, seed=1)
    x_out, idx = map(torch.cat, zip(*epoch_batches(loader, 0), strict=True))
    assert x_out.shape == (n, 3, 16, 12) and x_out.dtype == torch.float32
    # an independent reference: try every window of the padded source, plain and mirrored
    padded = torch.nn.functional.pad(ds.images[idx], (pad, pad, pad, pad)).float() / 255
    matches = torch.zeros(n, dtype=torch.long)
    dys, dxs, flips = torch.full((n,), -1), torch.full((n,), -1), torch.zeros(n, dtype=torch.bool)
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            window = padded[:, :, dy : dy + 16, dx : dx + 12]
            for flip in (False, True):
                candidate = window.flip(3) if flip else window
                hit = (candidate == x_out).flatten(1).all(1)
                matches += hit
                dys[hit], dxs[hit], flips[hit] = dy, dx, flip
    assert (matches == 1).all()  # every output is exactly one window of its own padded image
    assert set(dys.tolist()) == set(dxs.tolist()) == set(range(2 * pad + 1))
    assert abs(flips.float().mean().item() - 0.5) < 0.06  # 1200 fair coins: σ ≈ 0.014
    assert ((dys == pad) & (dxs == pad)).float().mean() < 0.05  # not mostly centred


def test_plain_loader_yields_every_image_in_order_as_float():
    for uint8 in (True, False):
        ds = indexed_dataset(70, shape=(3, 8, 8), uint8=uint8)
        x, y = map(torch.cat, zip(*epoch_batches(DeviceLoader(ds, 32), 0), strict=True))
        assert x.dtype == torch.float32
        assert torch.equal(x, ds.float_images()) and torch.equal(y, ds.labels)


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_together_see_exactly_the_single_process_batches(world_size):
    ds = indexed_dataset(1037, shape=(3, 8, 8))  # last global batch: 37 images
    kwargs = dict(shuffle=True, augment=True, seed=5)
    single = epoch_batches(DeviceLoader(ds, 100, **kwargs), 2)
    ranks = [
        epoch_batches(DeviceLoader(ds, 100, rank=r, world_size=world_size, **kwargs), 2)
        for r in range(world_size)
    ]
    assert all(len(r) == len(single) == 11 for r in ranks)
    for i, (x, y) in enumerate(single):
        assert torch.equal(torch.cat([r[i][0] for r in ranks]), x)
        assert torch.equal(torch.cat([r[i][1] for r in ranks]), y)
    assert [len(r[0][1]) for r in ranks] == [100 // world_size] * world_size


def test_a_last_batch_smaller_than_world_size_gives_empty_slices_but_equal_batch_counts():
    ds = indexed_dataset(102, shape=(1, 4, 4))  # last global batch: 2 images over 4 ranks
    for augment in (False, True):
        ranks = [
            list(DeviceLoader(ds, 100, shuffle=True, augment=augment, rank=r, world_size=4))
            for r in range(4)
        ]
        assert [len(r) for r in ranks] == [2, 2, 2, 2]
        assert [len(r[1][1]) for r in ranks] == [0, 1, 0, 1]
        assert [tuple(r[1][0].shape[1:]) for r in ranks] == [(1, 4, 4)] * 4


def test_len_and_drop_last():
    ds = indexed_dataset(250, shape=(1, 4, 4))
    assert len(DeviceLoader(ds, 100)) == 3
    assert [len(y) for _, y in DeviceLoader(ds, 100)] == [100, 100, 50]
    dropped = DeviceLoader(ds, 100, drop_last=True, shuffle=True)
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [100, 100]
    assert len(DeviceLoader(ds.subset(200), 100, drop_last=True)) == 2


def test_loader_rejects_a_batch_not_divisible_by_world_size_and_a_bad_rank():
    ds = indexed_dataset(10, shape=(1, 4, 4))
    with pytest.raises(DataError, match="divisible by world_size 3"):
        DeviceLoader(ds, 100, world_size=3)
    with pytest.raises(DataError, match=r"rank must be in 0\.\.1"):
        DeviceLoader(ds, 100, rank=2, world_size=2)


def test_loader_on_real_cifar_yields_float_batches_in_unit_range():
    folder = need_cifar_subset()
    ds = load_dataset("cifar10", split="test", root=folder)
    loader = DeviceLoader(ds, 256, shuffle=True, augment=True, device="cpu")
    batches = epoch_batches(loader, 0)
    assert len(batches) == len(loader) == 4
    x, y = batches[0]
    assert x.shape == (256, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_the_cpu_batches():
    ds = indexed_dataset(500, shape=(3, 32, 32), uint8=True)
    kwargs = dict(shuffle=True, augment=True, seed=3)
    cpu = epoch_batches(DeviceLoader(ds, 128, **kwargs), 1)
    gpu = epoch_batches(DeviceLoader(ds, 128, device="cuda", **kwargs), 1)
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
        assert xg.device.type == "cuda"
        assert torch.equal(xc, xg.cpu()) and torch.equal(yc, yg.cpu())


def test_grey_nhwc_images_get_plain_nchw_strides(tmp_path):
    # (N, 1, H, W) from uint8 NHWC has channels-last strides, which sent CPU training into
    # oneDNN's channels-last weight gradient and corrupted the heap (ResNet10, no augment)
    x = np.zeros((5, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "grey.npz", x=x, y=np.arange(5))
    images = load_dataset("npz", split="train", root=tmp_path / "grey.npz").images
    assert images.shape == (5, 1, 8, 8) and images.stride() == (64, 64, 8, 1)
