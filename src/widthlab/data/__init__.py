"""Data sets: a registry of loaders returning `Splits(train, val, test)`."""

from widthlab.data.base import ArrayDataset, Splits
from widthlab.data.registry import list_data, load_data, register_data
from widthlab.data import synthetic as _synthetic  # noqa: F401,E402  (each import registers its loader)
from widthlab.data import cifar10 as _cifar10  # noqa: F401,E402
from widthlab.data import digits as _digits  # noqa: F401,E402
from widthlab.data import imagenet as _imagenet  # noqa: F401,E402

__all__ = ["ArrayDataset", "Splits", "list_data", "load_data", "register_data"]
