"""Model zoo: a registry of width-scalable families, each declaring its `unit_layers`."""

from widthlab.models import alexnet as _alexnet  # noqa: F401  (importing a family registers it)
from widthlab.models import inception as _inception  # noqa: F401
from widthlab.models import mlp as _mlp  # noqa: F401
from widthlab.models import resnet as _resnet  # noqa: F401
from widthlab.init_schemes import INIT_SCHEMES
from widthlab.models.init import initialize
from widthlab.models.registry import create_model, list_models, register_model, scale_width

__all__ = ["INIT_SCHEMES", "create_model", "initialize", "list_models", "register_model", "scale_width"]
