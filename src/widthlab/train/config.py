"""`TrainConfig`: every training hyperparameter in one frozen, validated object."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from widthlab.validation import ConfigModel

Optimizer = Literal["momentum", "sgd", "adam", "rmsprop"]
Switch = Literal["auto", "on", "off"]  # auto: on when training on CUDA, off on the CPU
SPEED_ONLY = ("vectorize",)  # fields that change how fast a run trains, not what it computes


class TrainConfig(ConfigModel):
    """Hyperparameters of one training run (unknown keys are errors).

    Args:
        optimizer: ``momentum`` (SGD with `momentum`, default 0.9), ``sgd`` (no momentum), ``adam``, ``rmsprop``.
        lr: base learning rate (default 0.01); batch_size: base batch size (default 32).
        lr_batch_factor: the paper's joint factor k: learning rate × k and batch size × k (default 1).
        epochs: passes over the training split (default 50).
        weight_decay: L2 penalty added by the optimiser (default 0).
        rmsprop_alpha / eps: RMSProp's decay and the optimisers' epsilon (None = PyTorch's default).
        early_stopping: restore the weights of the epoch with the best validation accuracy (the paper's
            AlexNets); otherwise the final weights are kept.
        schedule: ``constant``; ``step`` (× `lr_decay` every `lr_decay_every` epochs: AlexNet ×0.95 per epoch,
            Inception ×0.96 every 8); ``multistep`` (× `lr_decay` after each epoch in `milestones`: ResNet56
            ÷10 after 91 and 136).
        max_steps: stop after this many optimiser steps (smoke runs); None: train all `epochs`.
        target_train_acc: stop after the first epoch whose training accuracy reaches it (random labels).
        snapshot_epochs: epochs after which a copy of the weights is kept, to measure along training.
        amp / channels_last / compile / data_on_device: the GPU path (bf16 autocast, channels_last memory
            format, torch.compile, in-memory data moved to the device once); ``auto`` turns each on when
            training on CUDA (compile only for runs of at least 20,000 optimiser steps, which win back its tens
            of seconds) and off on the CPU, so CPU results stay fp32. ``on`` works on the CPU too: on a CPU
            with bf16 units, ``amp`` and ``channels_last`` train a CIFAR AlexNet 1.6-2.3x faster.
        compile_mode: torch.compile's mode when compiling: ``default``; ``reduce-overhead`` (CUDA graphs: for
            small models whose steps are launch-bound); ``max-autotune`` (tuned kernels and CUDA graphs, longer
            compilation); ``max-autotune-no-cudagraphs`` (tuned kernels alone). Only full batches run compiled:
            an epoch's last, smaller batch runs eagerly on the same weights, so nothing recompiles.
        num_workers: DataLoader processes decoding a data set that is not held in memory (ImageNet); the batches
            and crops do not depend on it. None (default): up to 8 when training on CUDA, 0 on the CPU.
        seed: seeds the batch order and any dropout; device: ``cpu``, ``cuda`` or ``auto``.
        vectorize: ``auto`` (default): a study trains its runs that differ only in seed and initial weights
            (replicates, initialisation variants) as one stacked model, with the numbers of training them one by
            one (float64 on the CPU: bit for bit; float32: to rounding; TF32 on CUDA: to its rounding); a compiled
            group compiles its stacked model. Models with batch norm or dropout, distributed runs, and
            convolutional models on the CPU (compute-bound: no faster stacked) train one by one. ``off``: always
            one by one. A speed switch: it is
            not part of a run's identity, so a study may be resumed with the other setting.

    Example:
        >>> config = TrainConfig(optimizer="adam", lr=1e-3, epochs=10)
        >>> config.optimizer, config.lr, config.epochs, config.batch_size
        ('adam', 0.001, 10, 32)
        >>> TrainConfig(epoch=10)
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: 1 validation error for TrainConfig
        epoch
          Extra inputs are not permitted ...
    """


    optimizer: Optimizer = "momentum"
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(32, ge=1)
    lr_batch_factor: float = Field(1.0, gt=0)
    epochs: int = Field(50, ge=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    rmsprop_alpha: float = Field(0.99, gt=0, lt=1)
    eps: float | None = Field(None, gt=0)
    early_stopping: bool = False
    schedule: Literal["constant", "step", "multistep"] = "constant"
    lr_decay: float = Field(0.1, gt=0, le=1)
    lr_decay_every: int = Field(1, ge=1)
    milestones: tuple[int, ...] = ()
    max_steps: int | None = Field(None, ge=1)
    target_train_acc: float | None = Field(None, gt=0, le=1)
    snapshot_epochs: tuple[int, ...] = ()
    amp: Switch = "auto"
    channels_last: Switch = "auto"
    compile: Switch = "auto"
    data_on_device: Switch = "auto"
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    num_workers: int | None = Field(None, ge=0)
    eval_batch_size: int = Field(1024, ge=1)
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    vectorize: Literal["auto", "off"] = "auto"

    @field_validator("amp", "channels_last", "compile", "data_on_device", "vectorize", mode="before")
    @classmethod
    def _yaml_switch(cls, value):
        """YAML 1.1 reads a bare ``off`` / ``on`` as a boolean: take it as the word that was written."""
        return {False: "off", True: "on"}.get(value, value) if isinstance(value, bool) else value

    def identity(self) -> dict:
        """The config as a run's identity: every field but the speed switches that do not change its numbers."""
        return self.model_dump(exclude=set(SPEED_ONLY))

    @property
    def effective_lr(self) -> float:
        """Learning rate after the joint factor k."""
        return self.lr * self.lr_batch_factor

    @property
    def effective_batch_size(self) -> int:
        """Batch size after the joint factor k (rounded, at least 1)."""
        return max(1, int(self.batch_size * self.lr_batch_factor + 0.5))
