"""Compression: a wide network made narrower by merging redundant units into the others or pruning them, as a
real smaller model (`compress`, `Compressed`, `load_compressed`), and the compressed width of every run of a
study, stored in its store (`compress_study`).

This package reads models and inputs through `widthlab.measure`; shrinking layers whose channels are coupled
through residual adds or concatenations needs Torch-Pruning (``pip install 'widthlab[compress]'``).
"""

from widthlab.compress.core import METHODS, Compressed, compress, load_compressed
from widthlab.compress import hf as _hf  # registers the HF transformers compressor with `compress`
from widthlab.compress.select import IMPORTANCES
from widthlab.compress.study import CompressedStudy, compress_study

__all__ = ["IMPORTANCES", "METHODS", "Compressed", "CompressedStudy", "compress", "compress_study", "load_compressed"]
