"""Train an intervention on (prompt, target continuation) pairs: cross-entropy on the target tokens.

    >>> iv = LoReFT(handle.d_model, 4, "resid_post.9")
    >>> res = train_intervention(handle, iv, [TrainExample("How was your day?", "Awful.")],
    ...                          TrainConfig(epochs=4))

The model is frozen; only the intervention's parameters get gradients. During training the
intervention acts at ``TrainConfig.positions`` (default the last prompt token, as pyreft's
``l1`` and the MSRS code) whatever its own rule is, which is restored afterwards; the targets
are its "generation". Examples are tokenised by :func:`steerlab.tokens.encode_pair`: prompts
rendered with the chat template (``chat=True``); each target cut to ``max_target_tokens``
tokens, with an end-of-sequence token appended when it was not cut (``add_eos``). The loss is
the mean negative log-likelihood of the target tokens, plus whatever ``extra_loss`` returns (a
dict of named, already weighted terms; e.g. MSRS's gate and alignment terms,
:class:`steerlab.steering.msrs.MSRSLoss`). Logits are computed for the target positions only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from steerlab.config import check_nonnegative, check_positive, check_types
from steerlab.interventions.algebra import Intervention
from steerlab.interventions.hooks import Steering, steer
from steerlab.models import ModelHandle
from steerlab.positions import as_positions
from steerlab.tokens import encode_pair, pad

logger = logging.getLogger(__name__)

__all__ = [
    "Batch",
    "ExtraLoss",
    "TrainConfig",
    "TrainExample",
    "TrainResult",
    "encode_examples",
    "evaluate_loss",
    "train_intervention",
]


class TrainExample(NamedTuple):
    """One training pair."""

    prompt: str
    """The user message (or raw text with ``chat=False``)."""
    target: str
    """The continuation the steered model should produce."""
    group: str = ""
    """Which attribute it teaches (MSRS's gate prior); free-form otherwise."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train_intervention`."""

    epochs: int = 4
    """Passes over the examples (the MSRS reference, waitxian/MSRS ``train.py``: 4)."""
    batch_size: int = 2
    """Examples per step (the MSRS reference: 2)."""
    lr: float = 5e-3
    """AdamW learning rate (the MSRS reference's default: 5e-3)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_target_tokens: int = 64
    """Target tokens kept per example (the reference keeps whole targets; 64 covers every
    target in ``data/steering``)."""
    add_eos: bool = True
    """Append end-of-sequence to targets that were not cut."""
    chat: bool = True
    """Render prompts with the chat template."""
    positions: str = "last"
    """Where the intervention acts during training."""
    grad_clip: float | None = 1.0
    """Clip the gradient norm (None: no clipping)."""
    seed: int = 0
    """Seeds the shuffling."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "epochs", "batch_size", "lr", "max_target_tokens", "grad_clip")
        check_nonnegative(self, "weight_decay", "seed")
        as_positions(self.positions)


class Batch(NamedTuple):
    """One right-padded training batch."""

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    prompt_len: Int[Tensor, " batch"]
    """Prompt tokens per example (the rest is target)."""
    groups: list[str]
    """Each example's group."""


class TrainResult(NamedTuple):
    """What :func:`train_intervention` returns."""

    history: list[dict[str, float]]
    """Per step: ``loss`` (the total), ``ce`` and every extra term, and ``epoch``."""
    epoch_ce: list[float]
    """Mean CE over each epoch's steps."""


ExtraLoss = Callable[[Intervention, Batch], dict[str, Tensor]]


def encode_examples(
    handle: ModelHandle, examples: Sequence[TrainExample], config: TrainConfig
) -> list[tuple[list[int], int]]:
    """Token ids (prompt + target) and prompt length of every example
    (:func:`steerlab.tokens.encode_pair`)."""
    out = []
    for i, ex in enumerate(examples):
        if not ex.prompt or not ex.target:
            raise ValueError(f"example {i} has an empty prompt or target")
        out.append(encode_pair(handle, ex.prompt, ex.target, chat=config.chat,
                               max_completion_tokens=config.max_target_tokens,
                               add_eos=config.add_eos))  # fmt: skip
    return out


def _batch(handle: ModelHandle, encoded: list[tuple[list[int], int]], groups: list[str]) -> Batch:
    enc = pad(handle, [ids for ids, _ in encoded], prompt_len=[p for _, p in encoded])
    assert enc.prompt_len is not None
    return Batch(enc.input_ids, enc.attention_mask, enc.prompt_len, groups)


def _ce(handle: ModelHandle, s: Steering | None, batch: Batch) -> Tensor:
    """Mean NLL of the target tokens of ``batch`` under the steered model."""
    dev = handle.device
    ids, am = batch.input_ids.to(dev), batch.attention_mask.to(dev)
    if s is not None:
        s.new_prompt(batch.prompt_len)  # the targets are "generation"
    hidden = handle.model.base_model(input_ids=ids, attention_mask=am).last_hidden_state
    pos = torch.arange(ids.shape[1], device=dev)
    plen, n = batch.prompt_len.to(dev)[:, None], am.sum(1, keepdim=True)
    # the hidden state at t predicts token t + 1: t runs over [plen − 1, n − 2]
    pred = (pos >= plen - 1) & (pos <= n - 2)
    logits = handle.model.get_output_embeddings()(hidden[pred])
    labels = ids[:, 1:][pred[:, :-1]]
    return torch.nn.functional.cross_entropy(logits.float(), labels)


def _loader(n: int, batch_size: int, gen: torch.Generator) -> list[list[int]]:
    order = torch.randperm(n, generator=gen).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


class _TrainingPositions:
    """Set ``iv.positions`` (and train mode) for the duration; restore on exit."""

    def __init__(self, iv: Intervention, rule: str, train: bool) -> None:
        self.iv, self.rule, self.train = iv, as_positions(rule), train

    def __enter__(self) -> None:
        self.saved = (self.iv.positions, self.iv.training)
        self.iv.positions = self.rule
        self.iv.train(self.train)

    def __exit__(self, *exc: Any) -> None:
        self.iv.positions = self.saved[0]
        self.iv.train(self.saved[1])


def train_intervention(
    handle: ModelHandle,
    iv: Intervention,
    examples: Sequence[TrainExample],
    config: TrainConfig | None = None,
    *,
    extra_loss: ExtraLoss | None = None,
    progress: bool | Callable[[dict[str, float]], None] = False,
) -> TrainResult:
    """Train ``iv``'s parameters so the steered model produces the targets (see module doc).

    Args:
        handle: the causal LM (frozen; its parameters get no gradient).
        iv: a trainable intervention (LoReFT, MSRS, a LowRankEdit with learnable f/gate).
        examples: the training pairs.
        config: :class:`TrainConfig`.
        extra_loss: ``(iv, batch) -> {name: weighted term}`` added to the CE after each forward.
        progress: True shows a tqdm bar; a callable gets each step's log.

    Returns:
        :class:`TrainResult`; ``iv`` is trained in place and left in eval mode.
    """
    config = config or TrainConfig()
    examples = list(examples)
    if not examples:
        raise ValueError("no training examples")
    params = [p for p in iv.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{iv.KIND} has no trainable parameters")
    encoded = encode_examples(handle, examples, config)
    iv.to(handle.device)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    n_steps = config.epochs * math.ceil(len(examples) / config.batch_size)
    bar = None
    if progress is True:
        bar = tqdm(total=n_steps, desc=f"train {iv.KIND}", leave=False)
    history: list[dict[str, float]] = []
    epoch_ce: list[float] = []
    frozen = [(p, p.requires_grad) for p in handle.model.parameters()]
    for p, _ in frozen:  # the model gets no gradient, whatever its flags were
        p.requires_grad_(False)
    try:
        with _TrainingPositions(iv, config.positions, True), steer(handle, iv) as s, \
                torch.enable_grad():  # fmt: skip
            for epoch in range(config.epochs):
                ces = []
                for rows in _loader(len(examples), config.batch_size, gen):
                    batch = _batch(handle, [encoded[i] for i in rows],
                                   [examples[i].group for i in rows])  # fmt: skip
                    ce = _ce(handle, s, batch)
                    terms = extra_loss(iv, batch) if extra_loss is not None else {}
                    loss = ce + sum(terms.values(), torch.zeros_like(ce))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if config.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                    opt.step()
                    log = {"epoch": float(epoch), "loss": loss.detach().item(), "ce": ce.detach().item(),
                           **{k: v.detach().item() for k, v in terms.items()}}  # fmt: skip
                    history.append(log)
                    ces.append(log["ce"])
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(ce=f"{log['ce']:.3f}", loss=f"{log['loss']:.3f}")
                    elif callable(progress):
                        progress(log)
                epoch_ce.append(sum(ces) / len(ces))
                logger.info("%s epoch %d: mean CE %.4f", iv.KIND, epoch, epoch_ce[-1])
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        if bar is not None:
            bar.close()
    iv.eval()
    return TrainResult(history, epoch_ce)


@torch.no_grad()
def evaluate_loss(
    handle: ModelHandle,
    iv: Intervention | None,
    examples: Sequence[TrainExample],
    config: TrainConfig | None = None,
) -> float:
    """Mean target CE (per batch, averaged) with ``iv`` at the training positions; None for
    the unsteered model."""
    config = config or TrainConfig()
    encoded = encode_examples(handle, list(examples), config)
    total, n = 0.0, 0
    for start in range(0, len(encoded), config.batch_size):
        part = encoded[start : start + config.batch_size]
        batch = _batch(handle, part,
                       [ex.group for ex in examples[start : start + config.batch_size]])  # fmt: skip
        if iv is None:
            total += float(_ce(handle, None, batch)) * len(part)
        else:
            with _TrainingPositions(iv, config.positions, False), steer(handle, iv) as s:
                total += float(_ce(handle, s, batch)) * len(part)
        n += len(part)
    return total / n
