"""Datasets and a Lightning DataModule over the prepared store and the split."""

from __future__ import annotations

import math

import lightning as L
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from flowerlab.data.split import load_split
from flowerlab.data.store import PreparedData, load_prepared
from flowerlab.data.transforms import Augmentation, BatchAugment, eval_transform, progressive_size


class StoredImages(Dataset):
    """The prepared images at ``indices``, transformed one by one."""

    def __init__(self, data: PreparedData, indices: list[int], transform):
        self.images, self.labels = data.tensors(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.labels[index]


def auto_batch_size(train_images: int, min_steps: int = 20, smallest: int = 16, largest: int = 128) -> int:
    """The largest power of two from ``smallest`` to ``largest`` that gives an epoch of
    ``train_images`` at least ``min_steps`` steps: small photo sets need the steps (960 photos:
    0.819 test accuracy at batch 128, 0.868 at 32, see the README)."""
    batch = largest
    while batch > smallest and train_images // batch < min_steps:
        batch //= 2
    return batch


class FlowerData(L.LightningDataModule):
    def __init__(self, prepared_dir: str, split_file: str, batch_size: int | None, num_workers: int = 0,
                 augmentation: Augmentation | None = None, train_transform=None, val_transform=None,
                 progressive_epochs: int | None = None):
        """``batch_size`` None: :func:`auto_batch_size` of the training split. Training batches get
        ``augmentation`` (:class:`BatchAugment`, on whole batches) when given, else
        ``train_transform`` image by image. ``progressive_epochs``: the augmentation crops to
        :func:`progressive_size` of the epoch in a run of that many epochs (the Trainer must then
        reload the training loader every epoch), else to the stored size."""
        super().__init__()
        self.prepared_dir, self.split_file, self.augmentation = prepared_dir, split_file, augmentation
        self.progressive_epochs = progressive_epochs
        self.batch_size, self.num_workers = batch_size, num_workers
        self.augment = v2.Identity() if augmentation else train_transform or eval_transform()
        self.plain = val_transform or eval_transform()  # val and test
        self.data: PreparedData | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.data = load_prepared(self.prepared_dir)
            split = load_split(self.split_file)
            self.datasets = {"train": StoredImages(self.data, split["train"], self.augment),
                             "val": StoredImages(self.data, split["val"], self.plain),
                             "test": StoredImages(self.data, split["test"], self.plain)}
            if self.batch_size is None:
                self.batch_size = auto_batch_size(len(split["train"]))

    def _loader(self, name: str, shuffle: bool, collate_fn=None) -> DataLoader:
        if len(self.datasets[name]) == 0:
            raise ValueError(f"the '{name}' split is empty: add images or change split fractions")
        return DataLoader(self.datasets[name], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          collate_fn=collate_fn, drop_last=name == "train" and self._lone_last_image())

    def _lone_last_image(self) -> bool:
        """Whether an epoch would end on a training batch of one image, which BatchNorm cannot
        train on ("Expected more than 1 value per channel"): 33 images at batch 16, say. That one
        image is then left out of the epoch (a different one each epoch: the order is shuffled).
        Under DDP each process draws its own share of the images, ``ceil(n / processes)``."""
        processes = self.trainer.world_size if self.trainer is not None else 1
        share = math.ceil(len(self.datasets["train"]) / processes)
        if share == 1:
            raise ValueError(f"the 'train' split has {len(self.datasets['train'])} image(s) for {processes} "
                             "process(es): training needs at least 2 images a batch; add images")
        return share % self.batch_size == 1

    def train_size(self, epoch: int) -> int:
        """The side of the training batches in ``epoch``."""
        if self.progressive_epochs and self.augmentation:
            return progressive_size(epoch, self.progressive_epochs, self.data.image_size)
        return self.data.image_size

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        augment = (BatchAugment(self.train_size(epoch), self.augmentation, len(self.data.classes))
                   if self.augmentation else None)
        return self._loader("train", shuffle=True, collate_fn=augment)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
