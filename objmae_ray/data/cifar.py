"""CIFAR-100 in its standard python format (`<root>/cifar-100-python/{train,test,meta}`), via torchvision.

torchvision's md5 checks are skipped (files must exist) so subsets and re-packed copies load; the
images (32 px) are resized to the training resolution by the fine-tuning transform.
"""
from __future__ import annotations

from pathlib import Path

from torchvision.datasets import CIFAR100

from objmae_ray.errors import ConfigError


class Cifar100(CIFAR100):
    """torchvision CIFAR100(download=False) without md5 checks; `num_classes` = 100."""

    train_list = [["train", None]]
    test_list = [["test", None]]
    meta = {"filename": "meta", "key": "fine_label_names", "md5": None}

    def __init__(self, root, *, train: bool, transform=None):
        files = self.train_list if train else self.test_list
        for name in [files[0][0], self.meta["filename"]]:
            path = Path(root) / self.base_folder / name
            if not path.is_file():
                raise ConfigError(f"{path}: CIFAR-100 file not found (expected the python version's layout)")
        try:
            super().__init__(str(root), train=train, transform=transform, download=False)
        except Exception as err:  # noqa: BLE001 - unpickling errors of a damaged file
            raise ConfigError(f"{Path(root) / self.base_folder}: unreadable CIFAR-100 file ({type(err).__name__}: {err})") from None
        self.num_classes = len(self.classes)

    def _check_integrity(self) -> bool:  # files were checked above; only the requested split must exist
        return True
