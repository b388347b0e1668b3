"""The widthlab version: its one source, read by the package root, checkpoints and the build (pyproject.toml)."""

__version__ = "0.1.0"
