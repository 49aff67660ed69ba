"""MNIST loading, checking, splitting and batching.

Two batching paths share one split:

* ``loader=tensor`` (default): each split is converted once to a float tensor on the training
  device and shuffled mini-batches are drawn by indexing it. No PIL, no per-sample Python.
* ``loader=torch``: the report's path, ``torchvision.datasets.MNIST`` with ``ToTensor()`` and a
  shuffled ``DataLoader``, kept so that the original setup can be reproduced and benchmarked.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from mnist_bench.config import MNIST_TRAIN_SIZE, Loader, Normalize

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
DOWNLOAD_TIMEOUT_S = 20.0  # per socket operation: a stalled mirror fails (DNS is not bounded)
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawFile:
    name: str
    magic: int
    count: int
    md5: str

    @property
    def header_size(self) -> int:
        return 16 if self.magic == IMAGE_MAGIC else 8

    @property
    def size(self) -> int:
        item = 28 * 28 if self.magic == IMAGE_MAGIC else 1
        return self.header_size + self.count * item


RAW_FILES = (
    RawFile("train-images-idx3-ubyte", IMAGE_MAGIC, 60_000, "6bbc9ace898e44ae57da46a324031adb"),
    RawFile("train-labels-idx1-ubyte", LABEL_MAGIC, 60_000, "a25bea736e30d166cdddb491f175f624"),
    RawFile("t10k-images-idx3-ubyte", IMAGE_MAGIC, 10_000, "2646ac647ad5339dbf082846283269ea"),
    RawFile("t10k-labels-idx1-ubyte", LABEL_MAGIC, 10_000, "27ae3e4e09519cfbb04c329615203637"),
)


class DataError(RuntimeError):
    """MNIST is missing or corrupt; the message is meant for the user as is."""


def raw_dir(root: str | Path) -> Path:
    return Path(root).expanduser().resolve() / "MNIST" / "raw"


def missing_data_message(root: str | Path, reason: str) -> str:
    files = "\n".join(f"    {f.name}" for f in RAW_FILES)
    return (
        f"MNIST could not be loaded or downloaded ({reason}).\n"
        f"Expected the four raw MNIST files (uncompressed, torchvision's layout) in\n"
        f"    {raw_dir(root)}\n"
        f"namely\n{files}\n"
        "Point the data root at a folder that holds MNIST/raw/ with data.root=/path/to/root "
        "or the MNIST_DATA_ROOT environment variable."
    )


def _file_problem(path: Path, spec: RawFile) -> str | None:
    """What is wrong with the file's size or IDX header, before it is read whole."""
    if not path.exists():
        return "file is missing"
    size = path.stat().st_size
    if size == 0:
        return "file is empty (0 bytes)"
    if size < spec.header_size:
        return f"file is truncated ({size} bytes, shorter than the IDX header)"
    with path.open("rb") as fh:
        header = fh.read(spec.header_size)
    magic, count = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    if magic != spec.magic:
        kind = "images (2051)" if spec.magic == IMAGE_MAGIC else "labels (2049)"
        return f"wrong IDX magic number {magic}, expected {kind}"
    if count != spec.count:
        return f"holds {count} items, expected {spec.count} (a file from the other split?)"
    if spec.magic == IMAGE_MAGIC:
        rows, cols = int.from_bytes(header[8:12], "big"), int.from_bytes(header[12:16], "big")
        if (rows, cols) != (28, 28):
            return f"images are {rows}x{cols}, expected 28x28"
    if size != spec.size:
        return f"file is {size} bytes, expected {spec.size} (truncated or padded)"
    return None


def _split_files(train: bool) -> tuple[RawFile, ...]:
    """The images file and the labels file of the training or the test split."""
    return RAW_FILES[0:2] if train else RAW_FILES[2:4]


@dataclass(frozen=True)
class RawContents:
    """The four raw files as read once, and the MD5 of each, by file name."""

    contents: dict[str, bytes]
    md5: dict[str, str]

    def split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One split's uint8 images (N, 28, 28) and int64 labels (N,)."""
        images_spec, labels_spec = _split_files(train)
        return _parse(self.contents[images_spec.name], self.contents[labels_spec.name])


def read_raw_files(root: str | Path, check_md5: bool = True) -> RawContents:
    """Read the four raw files once, checking size, IDX magic, dimensions, item counts, labels
    0-9 and (``check_md5``) the MD5 of the original files.

    Raises :class:`DataError` naming every bad file and its problem.
    """
    folder = raw_dir(root)
    contents, md5, problems = {}, {}, []
    for spec in RAW_FILES:
        path = folder / spec.name
        try:
            problem = _file_problem(path, spec)
            if problem is None:
                contents[spec.name] = path.read_bytes()
        except OSError as err:  # e.g. no read permission
            problem = f"cannot be read ({err.strerror or type(err).__name__})"
        if problem is None:
            md5[spec.name] = hashlib.md5(contents[spec.name], usedforsecurity=False).hexdigest()
            if check_md5 and md5[spec.name] != spec.md5:
                problem = f"MD5 differs from the original MNIST file ({spec.md5})"
            elif (spec.magic == LABEL_MAGIC
                  and (top := max(contents[spec.name][spec.header_size:])) > 9):
                problem = f"holds label {top}; digits are 0-9"
        if problem:
            problems.append(f"  {path}: {problem}")
    if problems:
        raise DataError("MNIST raw files failed their checks:\n" + "\n".join(problems))
    return RawContents(contents, md5)


def verify_raw_files(root: str | Path, check_md5: bool = True) -> None:
    """:func:`read_raw_files`, for its checks only."""
    read_raw_files(root, check_md5)


def load_mnist(root: str | Path, train: bool, transform=None):
    """``torchvision.datasets.MNIST`` with ``download=True``; any download failure becomes a
    :class:`DataError` that says where the files were expected."""
    from torchvision import datasets  # 1.4 s to import; only the download and loader=torch

    root = Path(root).expanduser().resolve()
    try:
        return datasets.MNIST(str(root), train=train, download=True, transform=transform)
    except Exception as err:  # torchvision raises RuntimeError, URLError, OSError ...
        reason = " ".join(f"{type(err).__name__}: {err}".split())  # one line, however long
        raise DataError(missing_data_message(root, reason[:300])) from None


@contextlib.contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """torchvision opens its download URLs without a timeout; bound every socket operation."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def ensure_mnist(root: str | Path, check_md5: bool = True) -> RawContents:
    """Download MNIST if none of its raw files is there, then read and check all four.

    A partial or damaged copy is never downloaded over: it is reported file by file instead.
    """
    if not any((raw_dir(root) / spec.name).exists() for spec in RAW_FILES):
        with socket_timeout(DOWNLOAD_TIMEOUT_S):
            load_mnist(root, train=True)
    return read_raw_files(root, check_md5=check_md5)


def _parse(images: bytes, labels: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """IDX contents whose headers are checked, as uint8 (N, 28, 28) and int64 (N,)."""
    header = RAW_FILES[0].header_size, RAW_FILES[1].header_size
    images_t = torch.frombuffer(bytearray(images), dtype=torch.uint8, offset=header[0])
    labels_t = torch.frombuffer(bytearray(labels), dtype=torch.uint8, offset=header[1])
    return images_t.view(-1, 28, 28), labels_t.long()


def read_mnist(root: str | Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw files of one split, which :func:`read_raw_files` has checked, as uint8 images
    (N, 28, 28) and int64 labels (N,).

    Read straight from the IDX files: torchvision's reader would cost its 1.4 s import on every
    run.
    """
    images_spec, labels_spec = _split_files(train)
    folder = raw_dir(root)
    return _parse((folder / images_spec.name).read_bytes(),
                  (folder / labels_spec.name).read_bytes())


def split_indices(n_train: int, val_size: int,
                  split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed train/validation split of the 60k training images: same seed, same split."""
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(split_seed))
    return perm[val_size:], perm[:val_size]


def configured_split(data_cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and validation indices into the 60k training images, as ``data_cfg`` says."""
    train_idx, val_idx = split_indices(MNIST_TRAIN_SIZE, data_cfg.val_size, data_cfg.split_seed)
    return train_idx[: data_cfg.max_train_samples or None], val_idx


def scale_images(images: torch.Tensor, normalize: str) -> torch.Tensor:
    """uint8 (N, 28, 28) to float (N, 1, 28, 28) in [0, 1], optionally standardised."""
    x = images.unsqueeze(1).float().div_(255.0)
    if normalize == Normalize.standard:
        x = x.sub_(MNIST_MEAN).div_(MNIST_STD)
    return x


def unit_pixels(x: torch.Tensor, normalize: str) -> torch.Tensor:
    """Undo :func:`scale_images`' standardisation: pixels in [0, 1] again."""
    return x * MNIST_STD + MNIST_MEAN if normalize == Normalize.standard else x


class TensorBatches:
    """Shuffled mini-batches indexed from tensors that already live on the training device.

    ``drop_last`` leaves out a last, partial batch, as ``DataLoader(drop_last=True)`` does.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool,
                 generator: torch.Generator | None = None, drop_last: bool = False) -> None:
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.generator, self.drop_last = generator, drop_last

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        starts = range(0, len(self) * self.batch_size, self.batch_size)
        if self.shuffle:
            order = torch.randperm(len(self.y), generator=self.generator).to(self.x.device)
            for start in starts:
                idx = order[start : start + self.batch_size]
                yield self.x[idx], self.y[idx]
        else:
            for start in starts:
                stop = start + self.batch_size
                yield self.x[start:stop], self.y[start:stop]


@dataclass(frozen=True)
class SplitRecord:
    """What a run records of one split (MLflow's dataset): its uint8 images and labels, and a
    digest of exactly those: the MD5 of the raw files' MD5s and of the indices taken from them."""

    images: torch.Tensor
    labels: torch.Tensor
    digest: str


def split_records(raw: RawContents, train_idx: torch.Tensor,
                  val_idx: torch.Tensor) -> dict[str, SplitRecord]:
    """The training and validation images at their indices in the training files, and the
    test files' images, by MLflow dataset context."""
    def record(train: bool, indices: torch.Tensor | None) -> SplitRecord:
        images, labels = parsed[train]
        digest = hashlib.md5(usedforsecurity=False)
        for spec in _split_files(train):
            digest.update(raw.md5[spec.name].encode())
        if indices is not None:
            images, labels = images[indices], labels[indices]
            digest.update(indices.numpy().astype("<i8").tobytes())  # the same on every machine
        return SplitRecord(images, labels, digest.hexdigest())

    parsed = {train: raw.split(train) for train in (True, False)}
    return {"train": record(True, train_idx), "validation": record(True, val_idx),
            "test": record(False, None)}


@dataclass
class MNISTSplits:
    train: TensorBatches | DataLoader
    val: TensorBatches | DataLoader
    test: TensorBatches | DataLoader
    generator: torch.Generator
    records: dict[str, SplitRecord]  # by MLflow dataset context: train, validation, test

    @property
    def n_train(self) -> int:
        return _n_samples(self.train)


def _n_samples(batches: TensorBatches | DataLoader) -> int:
    return len(batches.y) if isinstance(batches, TensorBatches) else len(batches.dataset)


def build_splits(data_cfg, batch_size: int, eval_batch_size: int, device: torch.device,
                 seed: int) -> MNISTSplits:
    """Verify the raw files, load MNIST and return train/validation/test batch iterables."""
    raw = ensure_mnist(data_cfg.root, check_md5=data_cfg.verify_md5)
    generator = torch.Generator().manual_seed(seed)
    train_idx, val_idx = configured_split(data_cfg)
    records = split_records(raw, train_idx, val_idx)
    drop_last = drops_single_image(len(train_idx), batch_size)
    if data_cfg.loader == Loader.torch:
        return _dataloader_splits(data_cfg, train_idx, val_idx, batch_size, eval_batch_size,
                                  generator, drop_last, records)
    return _tensor_splits(data_cfg, batch_size, eval_batch_size, device, generator, drop_last,
                          records)


def drops_single_image(n_train: int, batch_size: int) -> bool:
    """Whether each training epoch leaves out its last image.

    A last batch of one image cannot train a network whose BatchNorm sees a 1x1 map (ResNet-18
    and GoogLeNet here: "Expected more than 1 value per channel"), so it is dropped, as
    ``drop_last`` would. The shuffle changes which image that is every epoch.
    """
    if n_train % batch_size != 1 or n_train == 1:
        return False
    log.info("%d training images in batches of %d leave a last batch of one image: each epoch "
             "leaves out its last shuffled image", n_train, batch_size)
    return True


def _tensor_splits(data_cfg, batch_size, eval_batch_size, device, generator, drop_last: bool,
                   records: dict[str, SplitRecord]) -> MNISTSplits:
    def on_device(record: SplitRecord) -> tuple[torch.Tensor, torch.Tensor]:
        return (scale_images(record.images, data_cfg.normalize).to(device),
                record.labels.to(device))

    return MNISTSplits(
        train=TensorBatches(*on_device(records["train"]), batch_size, shuffle=True,
                            generator=generator, drop_last=drop_last),
        val=TensorBatches(*on_device(records["validation"]), eval_batch_size, shuffle=False),
        test=TensorBatches(*on_device(records["test"]), eval_batch_size, shuffle=False),
        generator=generator,
        records=records,
    )


def _dataloader_splits(data_cfg, train_idx, val_idx, batch_size, eval_batch_size,
                       generator, drop_last: bool, records: dict[str, SplitRecord]
                       ) -> MNISTSplits:
    from torchvision import transforms

    steps = [transforms.ToTensor()]
    if data_cfg.normalize == Normalize.standard:
        steps.append(transforms.Normalize((MNIST_MEAN,), (MNIST_STD,)))
    tf = transforms.Compose(steps)
    train_set = load_mnist(data_cfg.root, train=True, transform=tf)
    test_set = load_mnist(data_cfg.root, train=False, transform=tf)

    def loader(dataset, size: int, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=size, shuffle=shuffle,
                          num_workers=data_cfg.num_workers,
                          generator=generator if shuffle else None,
                          drop_last=shuffle and drop_last)

    return MNISTSplits(
        train=loader(Subset(train_set, train_idx.tolist()), batch_size, shuffle=True),
        val=loader(Subset(train_set, val_idx.tolist()), eval_batch_size, shuffle=False),
        test=loader(test_set, eval_batch_size, shuffle=False),
        generator=generator,
        records=records,
    )
