"""Labelled images -> resized, normalised tensors -> DataLoaders, with the same contract as the text
data modules (``prepare``, ``processor``, ``task_kwargs``, loaders).

Sources: ``builtin: digits`` (scikit-learn's 8x8 handwritten digits, shipped with scikit-learn, split
70/15/15 the same way in every run) or image folders (``train_dir``/``val_dir``/``test_dir`` with one
subfolder per class, read with PIL). The :class:`ImageProcessor` (size, channels, mean, std) turns
images in [0, 1] into model inputs; it is saved with the run and in the export as
``preprocessor_config.json``, and a run that starts from an export uses the export's.
Batches are ``{"pixel_values": float (B, C, H, W), "labels": long (B,)}``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from headstart.config.schema import ImageDataConfig
from headstart.data.loaders import SplitLoaders
from headstart.data.new_rows import NewRows, no_rows
from headstart.data.subsets import LabelAmount
from headstart.errors import ConfigError, DataError, did_you_mean

log = logging.getLogger(__name__)

#: The file name transformers' image processors use, so a headstart export looks like an HF model dir.
PROCESSOR_CONFIG = "preprocessor_config.json"
BUILTINS = ("digits",)
_DIGITS_SPLIT_SEED = 0  # fixed, so every run (pretrain, finetune, any seed) tests on the same images
_STATS_SAMPLE = 1000  # training images read to estimate the mean and std of image folders
# ITU-R 601-2 luma, as PIL's convert("L"): RGB -> one channel.
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class ImageProcessor:
    """How an image in [0, 1] becomes a model input: resized to ``image_size`` x ``image_size``
    (bilinear), given ``num_channels`` channels, and normalised per channel."""

    image_size: int
    num_channels: int
    image_mean: list[float]
    image_std: list[float]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(C, H, W) or (B, C, H, W) floats in [0, 1] -> normalised (.., num_channels, size, size)."""
        return self.normalize(self.resize(images))

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        batch = images if images.dim() == 4 else images.unsqueeze(0)
        batch = _to_channels(batch.float(), self.num_channels)
        if batch.shape[-2:] != (self.image_size, self.image_size):
            # antialias: a downscaled image averages its pixels instead of skipping some
            batch = F.interpolate(batch, size=(self.image_size, self.image_size), mode="bilinear",
                                  align_corners=False, antialias=True)
        return batch if images.dim() == 4 else batch.squeeze(0)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        shape = (-1, 1, 1)
        mean = torch.tensor(self.image_mean, dtype=images.dtype, device=images.device).view(shape)
        std = torch.tensor(self.image_std, dtype=images.dtype, device=images.device).view(shape)
        return (images - mean) / std

    def save_pretrained(self, directory: str | Path) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / PROCESSOR_CONFIG).write_text(json.dumps({
            "image_processor_type": "HeadstartImageProcessor", "size": {"height": self.image_size, "width": self.image_size},
            "num_channels": self.num_channels, "image_mean": self.image_mean, "image_std": self.image_std,
            "resample": "bilinear", "rescale_factor": 1 / 255,
        }, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ImageProcessor:
        processor = load_image_processor(directory)
        if processor is None:
            raise DataError(f"{directory} has no {PROCESSOR_CONFIG}; it was not saved with an image processor.")
        return processor


def load_image_processor(directory: str | Path) -> ImageProcessor | None:
    """The processor saved in ``directory`` (headstart's, or the size/mean/std of a transformers image
    processor's config), or None when there is none."""
    path = Path(directory) / PROCESSOR_CONFIG
    if not path.is_file():
        return None
    try:
        conf = json.loads(path.read_text())
        size = conf.get("size", conf.get("crop_size", 224))
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge")
        mean, std = list(conf["image_mean"]), list(conf["image_std"])
        return ImageProcessor(image_size=int(size), num_channels=int(conf.get("num_channels", len(mean))),
                              image_mean=mean, image_std=std)
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path} is not a readable image processor config ({type(err).__name__}: {err}). "
                        "Save it again with the run that made it, or remove it to use the data config.") from None


def _to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    have = images.size(1)
    if have == channels:
        return images
    if have == 1:
        return images.expand(-1, channels, -1, -1)
    if channels == 1 and have == 3:
        luma = torch.tensor(_LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images * luma).sum(1, keepdim=True)
    raise DataError(f"Cannot turn {have}-channel images into {channels}-channel ones; set data.num_channels={have}.")


# -- sources --------------------------------------------------------------------------------------
@dataclass
class _Split:
    """Images of one split: a decoded (N, C, H, W) tensor in [0, 1], or files read when needed."""

    images: torch.Tensor | list[Path]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> _Split:
        images = self.images[index] if isinstance(self.images, torch.Tensor) else [self.images[i] for i in index.tolist()]
        return _Split(images, self.labels[index])


def _digits() -> tuple[dict[str, _Split], list[str]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # 0..16 grey levels
    labels = torch.tensor(digits.target, dtype=torch.long)
    index = torch.arange(len(labels))
    # 70/15/15, stratified so every split has every digit in the same proportions.
    train, rest = train_test_split(index, test_size=0.3, stratify=labels, random_state=_DIGITS_SPLIT_SEED)
    val, test = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=_DIGITS_SPLIT_SEED)
    splits = {name: _Split(images[idx], labels[idx]) for name, idx in
              (("train", train), ("validation", val), ("test", test))}
    return splits, [str(d) for d in digits.target_names]


def _image_extensions() -> set[str]:
    from PIL import Image

    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _list_folder(root: str, key: str) -> dict[str, list[Path]]:
    """{class name: image files} of a folder with one subfolder per class."""
    path = Path(root)
    if not path.is_dir():
        raise DataError(f"data.{key}={root!r} is not a directory. Point it at a folder with one subfolder of "
                        "images per class (e.g. train/cat/*.png, train/dog/*.png).")
    extensions = _image_extensions()
    classes = {}
    for folder in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        classes[folder.name] = sorted(f for f in folder.iterdir()
                                      if f.is_file() and f.suffix.lower() in extensions and not f.name.startswith("."))
    if not any(classes.values()):
        raise DataError(f"data.{key}={root!r} holds no images: it needs one subfolder per class with image files "
                        f"({', '.join(sorted({'.png', '.jpg', '.jpeg', '.bmp'} & extensions))}, ...) in each.")
    return classes


def _check_readable(files: list[Path]) -> None:
    """Open every file's header now, so a stray non-image fails before training, naming the file."""
    from PIL import Image, UnidentifiedImageError

    for file in files:
        try:
            with Image.open(file):
                pass
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"{file} is not a readable image ({err}). Remove it from the folder or replace it.") from None


def read_image(path: Path, num_channels: int) -> torch.Tensor:
    """An image file as a (C, H, W) float tensor in [0, 1]: greyscale for one channel, else RGB."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L" if num_channels == 1 else "RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path} is not a readable image ({err}). Remove it from the folder or replace it.") from None
    tensor = torch.from_numpy(pixels.copy()).float().div_(255.0)
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)


def _folder_splits(dirs: dict[str, str | None], val_fraction: float, seed: int) -> tuple[dict[str, _Split], list[str]]:
    listed = {split: _list_folder(root, key) for split, (key, root) in dirs.items() if root}
    label_names = [name for name, files in listed["train"].items() if files]
    empty = [name for name, files in listed["train"].items() if not files]
    if empty:
        raise DataError(f"The class folders {empty[:5]} of data.train_dir={dirs['train'][1]!r} hold no images; "
                        "every class needs training images. Add some or remove those folders.")
    if len(label_names) < 2:
        raise DataError(f"data.train_dir={dirs['train'][1]!r} has a single class {label_names}; classification "
                        "needs two or more class subfolders.")
    label_ids = {name: i for i, name in enumerate(label_names)}
    splits = {}
    for split, classes in listed.items():
        unseen = sorted(name for name, files in classes.items() if files and name not in label_ids)
        if unseen:
            raise DataError(f"data.{dirs[split][0]}={dirs[split][1]!r} has classes {unseen[:5]} that data.train_dir "
                            f"lacks (training classes: {label_names[:10]}). Every class must have training images.")
        files = [(f, label_ids[name]) for name, paths in classes.items() for f in paths]
        _check_readable([f for f, _ in files])
        splits[split] = _Split([f for f, _ in files], torch.tensor([label for _, label in files], dtype=torch.long))
    if "validation" not in splits:
        order = torch.randperm(len(splits["train"]), generator=torch.Generator().manual_seed(seed))
        n_val = max(1, round(val_fraction * len(order)))
        splits["validation"], splits["train"] = splits["train"].subset(order[:n_val]), splits["train"].subset(order[n_val:])
    return splits, label_names


# -- datasets -------------------------------------------------------------------------------------
class _ProcessedImages(Dataset):
    """Images processed once, in memory (the builtin sets are small)."""

    def __init__(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> None:
        self.pixel_values, self.labels = pixel_values, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values[i], "labels": self.labels[i]}


class _ImageFiles(Dataset):
    """Image files, read and processed when a batch asks for them (``labels`` None: images to predict)."""

    def __init__(self, files: list[Path], labels: torch.Tensor | None, processor: ImageProcessor) -> None:
        self.files, self.labels, self.processor = files, labels, processor

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        pixel_values = self.processor(read_image(self.files[i], self.processor.num_channels))
        return {"pixel_values": pixel_values} if self.labels is None else {"pixel_values": pixel_values,
                                                                           "labels": self.labels[i]}


# -- the data module ------------------------------------------------------------------------------
class ImageDataModule(SplitLoaders, pl.LightningDataModule):
    # A last training batch of one or two images breaks batch norm and leaves contrastive losses
    # without negatives; drop it (a different remainder each epoch) unless that drops everything.
    drop_last_train = True

    def __init__(
        self,
        builtin: str | None = None,
        train_dir: str | None = None,
        val_dir: str | None = None,
        test_dir: str | None = None,
        predict_files: list[str] | None = None,
        val_fraction: float = ImageDataConfig.val_fraction,
        processor: str | None = None,
        image_size: int = ImageDataConfig.image_size,
        num_channels: int = ImageDataConfig.num_channels,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        label_fraction: float = ImageDataConfig.label_fraction,
        label_count: int | None = None,
        label_sampling: str = ImageDataConfig.label_sampling,
        batch_size: int = ImageDataConfig.batch_size,
        eval_batch_size: int | None = None,
        num_workers: int = ImageDataConfig.num_workers,
        seed: int = 42,
    ) -> None:
        super().__init__()
        if builtin is None and not train_dir:
            raise ConfigError("No training images: set data.train_dir to a folder with one subfolder of images per "
                              "class, or data.builtin to a data set that ships with headstart (digits).")
        if builtin is not None and (train_dir or val_dir or test_dir):
            raise ConfigError(f"data.builtin={builtin!r} and data.train_dir/val_dir/test_dir are both set; use one: "
                              "data.builtin=null for your folders, or drop the folders.")
        if builtin is not None and builtin not in BUILTINS:
            raise ConfigError(f"data.builtin={builtin!r} is not a builtin image data set.{did_you_mean(builtin, BUILTINS)} "
                              f"Use one of: {', '.join(BUILTINS)}.")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction} must lie strictly between 0 and 1.")
        self.label_amount = LabelAmount(label_fraction, label_count, label_sampling)
        if num_channels not in (1, 3):
            raise ConfigError(f"data.num_channels={num_channels} must be 1 (greyscale) or 3 (RGB).")
        if image_size < 1:
            raise ConfigError(f"data.image_size={image_size} must be a positive number of pixels.")
        for name, value in (("image_mean", image_mean), ("image_std", image_std)):
            if value is not None and len(value) != num_channels:
                raise ConfigError(f"data.{name}={list(value)} needs one value per channel (data.num_channels={num_channels}).")
        if image_std is not None and min(image_std) <= 0:
            raise ConfigError(f"data.image_std={list(image_std)} must be positive.")
        self.builtin = builtin
        self.dirs = {"train": ("train_dir", train_dir), "validation": ("val_dir", val_dir), "test": ("test_dir", test_dir)}
        self.predict_files = list(predict_files or [])  # read by mode=predict (headstart.pipeline.inference)
        self.val_fraction = val_fraction
        self.processor_path = processor
        self.image_size = image_size
        self.num_channels = num_channels
        self.image_mean = list(image_mean) if image_mean is not None else None
        self.image_std = list(image_std) if image_std is not None else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.label_names: list[str] = []
        self.datasets: dict[str, Dataset] | None = None
        self.collator = None
        self._processor: ImageProcessor | None = None

    # -- preparation --------------------------------------------------------------------------
    def read_splits(self):
        """The class folders listed and checked as ``prepare`` reads them (classes, a single class,
        classes missing from training, unreadable files), without decoding an image: what a pipeline
        calls before its first stage trains, so bad data stops it before any training. Returns the
        splits and the class names (None for a builtin data set)."""
        if self.builtin is not None:
            return None
        return _folder_splits(self.dirs, self.val_fraction, self.seed)

    def prepare(self, processor_source: str | None = None) -> None:
        """Read the splits and set up the processor: the one saved in ``processor_source`` (an export or
        model directory) or ``data.processor`` when there is one, else one from the data config, with the
        mean and std of the training images unless the config gives them."""
        if self.builtin == "digits":
            splits, self.label_names = _digits()
        else:
            splits, self.label_names = _folder_splits(self.dirs, self.val_fraction, self.seed)
        # The statistics of all training images, before label_fraction: fewer labels, same images.
        self._processor = self._saved_processor(processor_source) or self._configured_processor(splits["train"])
        if not self.label_amount.everything:
            keep = self.label_amount.indices(splits["train"].labels, self.seed)
            splits["train"] = splits["train"].subset(torch.tensor(keep))
        self.datasets = {split: self._dataset(data) for split, data in splits.items()}
        log.info("Images: %s, %d classes, processor %s", {s: len(d) for s, d in self.datasets.items()},
                 len(self.label_names), self._processor)

    def _saved_processor(self, source: str | None) -> ImageProcessor | None:
        for directory in (source, self.processor_path):
            if directory:
                processor = load_image_processor(directory)
                if processor is not None:
                    log.info("Image preprocessing from %s", directory)
                    return processor
        if self.processor_path:
            raise DataError(f"data.processor={self.processor_path!r} has no {PROCESSOR_CONFIG}. Point it at a run's "
                            "processor/ directory or an export directory.")
        return None

    def _configured_processor(self, train: _Split) -> ImageProcessor:
        processor = ImageProcessor(self.image_size, self.num_channels, [0.0] * self.num_channels,
                                   [1.0] * self.num_channels)
        mean, std = self.image_mean, self.image_std
        if mean is None or std is None:
            est_mean, est_std = _channel_stats(train, processor)
            mean, std = mean or est_mean, std or est_std
        processor.image_mean, processor.image_std = mean, std
        return processor

    def _dataset(self, split: _Split) -> Dataset:
        if isinstance(split.images, torch.Tensor):
            return _ProcessedImages(self._processor(split.images), split.labels)
        return _ImageFiles(split.images, split.labels, self._processor)

    @property
    def processor(self) -> ImageProcessor:
        """What turns raw images into model inputs and travels with an export."""
        return self._processor

    def save_processor(self, output_dir: Path) -> None:
        self._processor.save_pretrained(Path(output_dir) / "processor")

    def set_collator(self, collator) -> None:
        self.collator = collator

    def task_kwargs(self) -> dict[str, Any]:
        return {"num_labels": len(self.label_names), "label_names": list(self.label_names)}

    # -- new images for a fine-tuned model (mode=predict / evaluate) --------------------------------
    def bind_model(self, processor: ImageProcessor, task_kwargs: dict[str, Any]) -> None:
        """Read new images as the fine-tuned model was trained to: its processor and its classes."""
        self._processor = processor
        self.label_names = list(task_kwargs.get("label_names") or [])

    def read_new_rows(self, split: str, paths: list[str], labelled: bool) -> NewRows:
        """Images to predict (image files, or every image file under a folder; the id is the file's path
        relative to the folder), or to evaluate on (folders with one subfolder per class, named as the
        model's classes)."""
        rows, labels = NewRows(), []
        label_ids = {name: i for i, name in enumerate(self.label_names)}
        for path in paths:
            root = Path(path)
            if labelled:
                classes = _list_folder(path, f"{split}_files")
                unknown = sorted(name for name, found in classes.items() if found and name not in label_ids)
                if unknown:
                    raise DataError(f"data.{split}_files: {path!r} has class folders {unknown[:5]} the model was not "
                                    f"trained on (its classes: {self.label_names[:10]}). Remove them, or fine-tune a "
                                    "model that knows them.")
                found = [(file, label_ids[name]) for name, files in classes.items() for file in files]
            elif root.is_dir():
                extensions = _image_extensions()
                found = [(file, None) for file in sorted(root.rglob("*")) if file.is_file()
                         and file.suffix.lower() in extensions and not file.name.startswith(".")]
            elif root.is_file():
                found = [(root, None)]
            else:
                raise DataError(f"data.{split}_files: {path!r} does not exist. Give image files, or folders of them.")
            _check_readable([file for file, _ in found])
            for file, label in found:
                rows.add(str(file.relative_to(root)) if root.is_dir() else str(file), path, {"file": file})
                labels.append(label)
        if not rows:
            raise no_rows(split, paths, "images")
        rows.examples = _ImageFiles([r["file"] for r in rows.records],
                                    torch.tensor(labels, dtype=torch.long) if labelled else None, self._processor)
        return rows


def _channel_stats(train: _Split, processor: ImageProcessor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the (resized) training images; image folders use a sample of them."""
    if isinstance(train.images, torch.Tensor):
        images = processor.resize(train.images)
    else:
        index = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:_STATS_SAMPLE]
        images = torch.stack([processor.resize(read_image(train.images[i], processor.num_channels)) for i in index])
    std = images.std(dim=(0, 2, 3)).clamp(min=1e-3)  # a constant channel would divide by zero
    return images.mean(dim=(0, 2, 3)).tolist(), std.tolist()
