"""Models and inputs a user already has, for `widthlab analyze`.

A model is named by one of:
- a widthlab checkpoint (``.pt`` written by a study or by `fit(..., checkpoint=...)`): rebuilt from its stored
  model spec and loaded with the weights the run was measured with;
- ``hf:PATH``: a HF transformers model saved with ``save_pretrained`` in the local folder PATH, loaded offline as
  the class its ``config.architectures[0]`` names (else ``AutoModel``); a folder with a ``config.json`` but no
  weights builds that model with random weights (needs the ``transformers`` package: ``widthlab[hf]``);
- ``module:function``: imported and called with no arguments; it must return an ``nn.Module``;
- ``torchvision:NAME`` or ``timm:NAME``: built by that package (random weights, nothing is downloaded) when it
  is installed.

Random weights (hub models, an ``hf:`` folder without weights, a function that draws them) come from
``torch.manual_seed(seed)``, set right before the model is built, so one seed gives one model.

Inputs are named by a registered data set (`widthlab.data.list_data()`, options via ``--data-opt``), a ``.pt``
file, or, with an ``hf:`` model, a ``.txt`` file of one example per line. A ``.pt`` file holds a tensor of inputs,
``{"x": inputs, "y": labels}``, a tuple/list of tensors (positional inputs; a last 1-D integer tensor is the
labels) or a dict of tensors (keyword inputs such as ``input_ids``, ``attention_mask``; a ``labels`` entry is
the labels), as `widthlab.measure.inputs` reads them. A study's checkpoint records its data set
(`study_data`), so it needs no data named at all.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from widthlab.data import load_data
from widthlab.data.base import ArrayDataset
from widthlab.errors import WidthlabError, first_line
from widthlab.measure.inputs import DEFAULT_MASK, first_batch
from widthlab.registry import call_user, resolve_callable
from widthlab.study.build import checkpoint_model, expected_input
from widthlab.train.checkpoint import checkpoint_meta, load_checkpoint

HUBS = ("torchvision", "timm")
HF = "hf:"
# The files `save_pretrained` writes the weights to (one file, or a sharded index).
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _has_hf_weights(path: Path) -> bool:
    """Whether the `save_pretrained` folder `path` holds weights (else its model is built with random ones)."""
    return any((path / name).is_file() for name in HF_WEIGHTS)


def is_checkpoint(spec: str) -> bool:
    """Whether the model `spec` names a checkpoint file (rather than ``hf:``, a hub or ``module:function``)."""
    return not spec.startswith(HF) and (spec.endswith((".pt", ".pth")) or Path(spec).is_file())


def load_model(spec: str, *, seed: int = 0, allow_code: bool = False) -> nn.Module:
    """The model named by `spec` (see the module docstring), in eval mode on the CPU.

    Args:
        spec: a checkpoint path, ``hf:PATH``, ``module:function``, ``torchvision:NAME`` or ``timm:NAME``.
        seed: ``torch.manual_seed(seed)`` right before a model is built, so its random weights are fixed
            (default 0; a checkpoint's weights do not depend on it).
        allow_code: rebuild a checkpoint whose model is a ``module:function`` by importing it, or let an
            ``hf:`` folder run the Python files its config.json names (transformers' ``trust_remote_code``). A
            checkpoint or a model folder is data: without this, the code it names is refused, never run.

    Example: a study's checkpoint, and a ``save_pretrained`` folder holding only a config (random weights):
        >>> load_model("widthlab-runs/mlp-10d/checkpoints/default-w0.5-r0.pt").unit_layers
        ['relu1']
        >>> from transformers import GPT2Config
        >>> GPT2Config(n_layer=1, n_embd=8, n_head=2, architectures=["GPT2LMHeadModel"]).save_pretrained("tiny-gpt2")
        >>> type(load_model("hf:./tiny-gpt2")).__name__
        'GPT2LMHeadModel'
    """
    if spec.startswith(HF):
        return _from_hf(spec[len(HF):], seed, allow_code)
    if is_checkpoint(spec):
        return _from_checkpoint(Path(spec), allow_code)
    hub, _, name = spec.partition(":")
    if hub in HUBS and name:
        return _from_hub(hub, name, seed)
    if ":" in spec:
        build = resolve_callable(spec, "model")
        torch.manual_seed(seed)
        model = call_user(build, spec, "model")  # its exception: one line naming it, not its traceback
        if not isinstance(model, nn.Module):
            raise WidthlabError(f"model {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model.eval()
    raise WidthlabError(f"model {spec!r} is neither a checkpoint file, 'hf:PATH', 'module:function', nor "
                        f"'torchvision:NAME' / 'timm:NAME'")


def random_weights(spec: str) -> bool:
    """Whether `load_model(spec)` draws the model's weights (from its seed) rather than reading them: a hub model
    (``torchvision:``/``timm:``, never downloaded) or an ``hf:`` folder without a weights file. A
    ``module:function`` is the user's own business, a checkpoint holds its weights."""
    if spec.startswith(HF):
        path = Path(spec[len(HF):]).expanduser()
        return not _has_hf_weights(path)
    hub, _, name = spec.partition(":")
    return hub in HUBS and bool(name) and not is_checkpoint(spec)


def _from_checkpoint(path: Path, allow_code: bool) -> nn.Module:
    return checkpoint_model(load_checkpoint(path), str(path), import_code=allow_code).eval()


def _from_hub(hub: str, name: str, seed: int) -> nn.Module:
    try:
        package = importlib.import_module(hub)
    except ImportError:
        raise WidthlabError(f"model '{hub}:{name}' needs the {hub} package, which is not installed") from None
    except Exception as exc:  # e.g. torchvision built for another torch fails at import with a RuntimeError
        raise WidthlabError(f"{hub} is installed but does not import here ({type(exc).__name__}: {exc})") from None
    torch.manual_seed(seed)
    try:
        model = package.models.get_model(name, weights=None) if hub == "torchvision" else \
            package.create_model(name, pretrained=False)
    except Exception as exc:
        raise WidthlabError(f"{hub} cannot build {name!r}: {exc}") from None
    return model.eval()


def study_data(spec: str) -> tuple[str, dict, int]:
    """``(name, options, seed)`` of the data set the study that wrote checkpoint `spec` measured on.

    `options` holds the data set's options and its ``root`` (None: ``$WIDTHLAB_DATA``); `seed` is the study's
    seed, which fixes the data (a synthetic teacher, a split). A checkpoint of another kind, one written by
    `fit` or by widthlab ≤ 0.1 without that record, or a study whose data set is a ``module:function`` (a
    checkpoint is data: what it names is not imported) is a `WidthlabError` asking for ``--data``.
    """
    if not is_checkpoint(spec):
        raise WidthlabError(f"--data is required for model {spec!r}: name a registered data set, a .pt file of "
                            "tensors or, with an hf: model, a .txt file (only a study's checkpoint knows its data)")
    meta = checkpoint_meta(load_checkpoint(spec), spec)
    data = meta.get("data")
    if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
        raise WidthlabError(f"checkpoint {spec!r} does not record its study's data set (written by fit() or an "
                            "older widthlab); name it with --data")
    options = dict(data)
    name = options.pop("name")
    if ":" in name:
        raise WidthlabError(f"checkpoint {spec!r} was measured on the data set {name!r}, a module:function; "
                            f"widthlab does not import code a checkpoint names: pass --data {name} yourself")
    options.setdefault("root", None)
    return name, options, int(meta.get("study_seed", 0))


def load_inputs(spec: str, *, split: str = "test", seed: int = 0, root: str | None = None,
                options: dict | None = None, model: str | None = None, max_length: int = 128):
    """The evaluation inputs named by `spec`: a registry data set's split, a ``.pt`` file or a ``.txt`` file.

    Args:
        spec: see the module docstring; split, seed, root, options: a registered data set's (default ``test``,
            0, ``$WIDTHLAB_DATA``, none).
        model: the model's spec; a ``.txt`` file needs ``hf:PATH``, whose folder's tokenizer reads it.
        max_length: tokens per example of a ``.txt`` file; longer lines are truncated (default 128).
    """
    path = Path(spec)
    if spec.endswith(".txt"):
        if model is None or not model.startswith(HF):
            raise WidthlabError(f"a text file ({spec!r}) needs an hf:PATH model, whose folder's tokenizer reads it; "
                                f"for model {model!r} save input tensors in a .pt file")
        if not path.is_file():
            raise WidthlabError(f"input file {spec!r} does not exist")
        return _tokenize(path, model[len(HF):], max_length)
    if spec.endswith(".pt") or path.is_file():
        if not path.is_file():
            raise WidthlabError(f"input file {spec!r} does not exist")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WidthlabError(f"{spec!r} is not a readable tensor file ({type(exc).__name__}: {exc})") from None
        return _tensor_inputs(obj, spec)
    return load_data(spec, root=root, seed=seed, **(options or {})).split(split)


def _tensor_inputs(obj: object, spec: str):
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict) and "x" in obj and set(obj) <= {"x", "y"}:  # widthlab's own (inputs, labels) format
        return ArrayDataset(obj["x"], obj["y"]) if "y" in obj else obj["x"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}  # keyword inputs; a "labels" entry is the labels
    if isinstance(obj, (tuple, list)) and obj and all(isinstance(v, torch.Tensor) for v in obj):
        return tuple(obj)  # positional inputs; a last 1-D integer tensor is the labels
    if isinstance(obj, dict):
        bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        raise WidthlabError(f"{spec!r} holds a dict whose entries must all be tensors; "
                            f"{', '.join(map(repr, bad)) or 'it is empty'}" + (" are not" if bad else ""))
    raise WidthlabError(f"{spec!r} must hold a tensor, a tuple/list of tensors, a dict of tensors (keyword inputs) "
                        f"or {{'x': ..., 'y': ...}}; it holds {type(obj).__name__}")


# HF transformers -----------------------------------------------------------------------------------------------------

def _transformers():
    try:
        import transformers
    except ImportError:
        raise WidthlabError("hf: models need the transformers package, which is not installed "
                            "(pip install 'widthlab[hf]')") from None
    except Exception as exc:
        raise WidthlabError(f"transformers is installed but does not import here ({first_line(exc)})") from None
    return transformers


@contextlib.contextmanager
def _quiet(transformers) -> Iterator[None]:
    """transformers' logging at error level and its progress bars off for the block (both restored)."""
    logging = transformers.utils.logging
    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _hf_folder(folder: str) -> Path:
    if not folder:
        raise WidthlabError("model 'hf:' names no folder; use hf:PATH (a folder written by save_pretrained)")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise WidthlabError(f"model 'hf:{folder}': folder {str(path)!r} does not exist")
    return path


def _remote_code(path: Path) -> str | None:
    """The first ``auto_map`` entry of the folder's config.json or tokenizer_config.json (code transformers would
    import from the folder), or None."""
    for name in ("config.json", "tokenizer_config.json"):
        try:
            data = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if auto_map:
            first = next(iter(auto_map.values())) if isinstance(auto_map, dict) else auto_map
            return f"{name} auto_map names {first!r}"
    return None


def _refuse_remote_code(path: Path, folder: str, allow_code: bool) -> None:
    """After transformers refused to load the folder (``trust_remote_code=False``): the one line saying why, when
    the folder names code of its own."""
    remote = None if allow_code else _remote_code(path)
    if remote is not None:
        raise WidthlabError(f"model 'hf:{folder}' needs code from its folder ({remote}); widthlab does not run a "
                            "model folder's code: allow it with --allow-code if you trust that folder") from None


def _from_hf(folder: str, seed: int, allow_code: bool = False) -> nn.Module:
    path = _hf_folder(folder)
    if not (path / "config.json").is_file():
        raise WidthlabError(f"model 'hf:{folder}': {str(path)!r} holds no HF model (no config.json; write one with "
                            "model.save_pretrained(folder))")
    transformers = _transformers()
    with _quiet(transformers):
        try:
            config = transformers.AutoConfig.from_pretrained(path, local_files_only=True,
                                                              trust_remote_code=allow_code)
        except Exception as exc:
            _refuse_remote_code(path, folder, allow_code)
            raise WidthlabError(f"model 'hf:{folder}': cannot read its config.json ({first_line(exc)})") from None
        names = getattr(config, "architectures", None) or []
        try:
            cls = getattr(transformers, names[0], None) if names else None
        except Exception:  # a lazily imported model module that fails: fall back as for an unknown name
            cls = None
        if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
            cls = transformers.AutoModel
        torch.manual_seed(seed)  # weights the folder lacks (all of them, or a new head) are drawn from it
        try:
            if _has_hf_weights(path):
                model = cls.from_pretrained(path, local_files_only=True, trust_remote_code=allow_code)
            else:
                model = cls.from_config(config, trust_remote_code=allow_code) if cls is transformers.AutoModel \
                    else cls(config)
        except Exception as exc:
            _refuse_remote_code(path, folder, allow_code)
            raise WidthlabError(f"model 'hf:{folder}': transformers cannot build {cls.__name__} from it "
                                f"({first_line(exc)})") from None
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # cached keys/values are never reused here; they only cost memory
    return model.eval()


def _tokenize(text: Path, folder: str, max_length: int) -> dict[str, torch.Tensor]:
    """One example per non-empty line of `text`, tokenized by the tokenizer saved in `folder`, padded."""
    path = _hf_folder(folder)
    try:
        lines = [line.strip() for line in text.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise WidthlabError(f"cannot read {str(text)!r} as UTF-8 text ({first_line(exc)})") from None
    examples = [line for line in lines if line]
    if not examples:
        raise WidthlabError(f"{str(text)!r} holds no text (one example per line)")
    advice = "save one with tokenizer.save_pretrained(folder), or pass token ids in a .pt file"
    transformers = _transformers()
    # Without a tokenizer_config.json, transformers may build an empty tokenizer from the model type alone.
    if not (path / "tokenizer_config.json").is_file():
        raise WidthlabError(f"model 'hf:{folder}' has no tokenizer (no tokenizer_config.json); {advice}")
    with _quiet(transformers):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                                   trust_remote_code=False)
        except Exception as exc:
            raise WidthlabError(f"model 'hf:{folder}' has no tokenizer that loads offline ({first_line(exc)}); "
                                f"{advice}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise WidthlabError(f"the tokenizer of hf:{folder} has neither a pad nor an eos token to pad lines of "
                                "different lengths with; pass token ids in a .pt file")
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 style; padded positions are masked out anyway
    encoding = tokenizer(examples, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    if encoding["input_ids"].shape[1] == 0:
        raise WidthlabError(f"the tokenizer of hf:{folder} turned {str(text)!r} into no tokens at all; {advice}")
    return {str(k): v for k, v in encoding.items()}


# Helpers of the analyze command --------------------------------------------------------------------------------------

def first_examples(inputs, n: int):
    """The first `n` examples of `inputs` (all of them when there are fewer), in the same form."""
    if isinstance(inputs, torch.Tensor):
        return inputs[:n]
    if isinstance(inputs, Mapping):
        return {k: v[:n] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(v[:n] for v in inputs)
    if isinstance(inputs, ArrayDataset):
        return ArrayDataset(inputs.x[:n], inputs.y[:n])
    if isinstance(inputs, Dataset):
        return Subset(inputs, range(min(n, len(inputs))))
    raise WidthlabError(f"--max-examples cannot shorten inputs of type {type(inputs).__name__}")


@torch.no_grad()
def trial_run(model: nn.Module, inputs, spec: str, *, mask: str | int | None = DEFAULT_MASK) -> None:
    """Run `model` once on the first 2 examples: a failure (inputs of the wrong shape or kind) becomes one line
    naming the model, the inputs' shapes and, when known, what the model takes."""
    batch = first_batch(model, inputs, 2, mask)
    try:
        batch.run(model)
    except Exception as exc:
        expected = expected_input(model)
        raise WidthlabError(f"model {spec!r} cannot run on inputs of shape {batch.shapes}: {first_line(exc)}"
                            + (f" ({expected})" if expected else "")) from None
