"""Data sets: a registry of loaders returning `Splits(train, val, test)`."""

from widthlab.data.base import ArrayDataset, Splits
from widthlab.data.registry import list_data, load_data, register_data
from widthlab.data import synthetic as _synthetic  # noqa: F401,E402  (registers the loader)

__all__ = ["ArrayDataset", "Splits", "list_data", "load_data", "register_data"]
