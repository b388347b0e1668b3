"""Synthetic, uncorrelated data labelled by a random teacher MLP (paper §A; docs/tutorial.md).

The teacher has the student's architecture at 1/4x (32 hidden ReLU units, 2 outputs); inputs are N(0, I);
the label is the teacher's argmax. A teacher is redrawn until each label is 40–60% of 20,000 random inputs.
Everything is a function of `seed`, so one study (one seed) has one teacher shared by all widths and replicates.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from widthlab.data.base import ArrayDataset, Splits, check_count
from widthlab.data.registry import register_data
from widthlab.errors import WidthlabError
from widthlab.init_schemes import check_init, init_tensor_
from widthlab.memory import check_memory
from widthlab.seeding import derive_seed, torch_generator

BALANCE_INPUTS = 20_000
BALANCE_RANGE = (0.4, 0.6)
MAX_TEACHER_DRAWS = 1_000
STUDENT_HIDDEN = 128  # the 1x MLP's hidden units; the teacher has round(128 · teacher_width)


class Teacher(nn.Module):
    """input (N, D) → fc1 → ReLU (N, H) → readout (N, 2): the student MLP's architecture, H hidden units."""

    def __init__(self, input_dim: int, hidden: int, num_classes: int = 2):
        super().__init__()
        # skip_init: no draw from the global RNG (the caller's stream stays as it was); `draw_teacher` fills
        # every parameter from the teacher's own seed.
        self.fc1 = nn.utils.skip_init(nn.Linear, input_dim, hidden)
        self.readout = nn.utils.skip_init(nn.Linear, hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(torch.relu(self.fc1(x.flatten(1))))


def teacher_hidden(teacher_width: object) -> int:
    """round(128 · teacher_width) with halves rounded up, at least 1 (the zoo's `scale_width` rule)."""
    if (isinstance(teacher_width, bool) or not isinstance(teacher_width, (int, float))
            or not math.isfinite(teacher_width) or teacher_width <= 0):
        raise WidthlabError(f"synthetic: teacher_width must be a positive finite number, got {teacher_width!r}")
    return max(1, int(math.floor(STUDENT_HIDDEN * float(teacher_width) + 0.5)))


@torch.no_grad()
def draw_teacher(input_dim: int, hidden: int, init: str, seed: int, draw: int) -> Teacher:
    """Teacher number `draw` of study seed `seed`: weights by `init` from one stream (fc1, then readout),
    readout bias 0, hidden biases N(0, 1) from another."""
    teacher = Teacher(input_dim, hidden)
    weights = torch.Generator().manual_seed(derive_seed(seed, "synthetic", "teacher", draw))
    for layer in (teacher.fc1, teacher.readout):
        init_tensor_(layer.weight, init, None, weights)
    teacher.readout.bias.zero_()
    # Hidden biases N(0, 1): without them the teacher is positively homogeneous (every unit's boundary
    # passes through the origin), a narrower function class than a trained network's.
    teacher.fc1.bias.normal_(0.0, 1.0, generator=torch_generator(seed, "synthetic", "teacher-bias", draw))
    return teacher


@torch.no_grad()
def _labels(teacher: torch.nn.Module, x: torch.Tensor, chunk: int = 2_000) -> torch.Tensor:
    return torch.cat([teacher(x[i:i + chunk]).argmax(1) for i in range(0, len(x), chunk)])


@torch.no_grad()
def make_teacher(input_dim: int, seed: int, teacher_width: float = 0.25,
                 teacher_init: str = "glorot_normal") -> tuple[Teacher, int]:
    """Draw teachers until the label balance on 20,000 fresh inputs is within 40–60%.

    Returns the teacher and the number of draws it took.
    """
    hidden = teacher_hidden(teacher_width)
    check_init(teacher_init, None)
    probe_gen = torch_generator(seed, "synthetic", "balance-inputs")
    for draw in range(MAX_TEACHER_DRAWS):
        teacher = draw_teacher(input_dim, hidden, teacher_init, seed, draw)
        counts = torch.zeros(2)
        for start in range(0, BALANCE_INPUTS, 2_000):
            n = min(2_000, BALANCE_INPUTS - start)
            counts += torch.bincount(_labels(teacher, torch.randn(n, input_dim, generator=probe_gen)), minlength=2)
        share = counts[1].item() / BALANCE_INPUTS
        if BALANCE_RANGE[0] <= share <= BALANCE_RANGE[1]:
            return teacher.eval(), draw + 1
    raise RuntimeError(f"no balanced teacher in {MAX_TEACHER_DRAWS} draws (input_dim={input_dim}, seed={seed})")


@register_data
def synthetic(*, seed: int = 0, input_dim: int = 10, n_train: int = 1_000, n_val: int = 1_000,
              n_test: int = 1_000, teacher_width: float = 0.25, teacher_init: str = "glorot_normal",
              root=None) -> Splits:
    """Teacher-labelled Gaussian inputs of dimension `input_dim` (10 or 10,000 in the paper).

    Args:
        seed: the study seed; it fixes the teacher and every input.
        input_dim: input dimension; n_train / n_val / n_test: examples per split (default 1,000 each).
        teacher_width: teacher size factor relative to the 128-unit MLP (default 1/4 → 32 units).
        teacher_init: weight init of the teacher; its hidden biases are N(0, 1), its readout bias 0.
        root: ignored (synthetic data needs no folder); accepted so every data set takes the same options.
    """
    for key, value in (("input_dim", input_dim), ("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        check_count("synthetic", key, value)
    examples = n_train + n_val + n_test
    hidden = teacher_hidden(teacher_width)
    # float32 inputs and int64 labels of every split, the teacher's first layer and a chunk of its balance probe
    check_memory(4 * input_dim * (examples + hidden + 2_000) + 8 * examples, "cpu",
                 f"synthetic: {examples:,} examples of {input_dim:,} inputs", "lower n_train, n_val, n_test or input_dim")
    teacher, _ = make_teacher(input_dim, seed, teacher_width, teacher_init)
    gen = torch_generator(seed, "synthetic", "inputs")
    parts = []
    for n in (n_train, n_val, n_test):
        x = torch.randn(n, input_dim, generator=gen)
        parts.append(ArrayDataset(x, _labels(teacher, x)))
    return Splits(*parts, num_classes=2, input_shape=(input_dim,))
