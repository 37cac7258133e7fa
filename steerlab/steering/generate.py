"""Steered generation: ``generate(handle, prompts, interventions)`` and a side-by-side helper.

    >>> gen = generate(handle, ["Describe your morning."], AddVector(v, 8.0, "resid_post.12"))
    >>> gen.texts[0]

Prompts are rendered with the model's chat template (``chat=True``, optionally with a
``system`` message) or used as plain text, tokenised by :mod:`steerlab.tokens` (a BOS is
prepended when the handle says so, as every steerlab capture does), and generated in batches
padded on the **left** by :func:`steerlab.interventions.run.generate_tokens`. Steering goes
through :func:`steerlab.interventions.steer`, whose position rules count tokens by rank and
resolve per batch, so padding and batch composition do not change which tokens are edited
(character spans refer to the rendered prompt).

Decoding is greedy by default. With ``greedy=False`` tokens are sampled (temperature, top-p)
from a generator seeded with ``seed``; the global RNG is left as it was. Sampled texts depend
on the batch composition (one RNG stream is shared by the batch), so fix ``batch_size`` too
when reproducing them. Greedy batched decoding equals one-by-one decoding up to float
round-off, which can flip a near-tied token.

Continuations are cut at the first end-of-sequence token (which is not included).
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from jaxtyping import Int
from torch import Tensor

from steerlab.checks import check_int, check_real
from steerlab.interventions.run import generate_tokens
from steerlab.models import ModelHandle
from steerlab.tokens import left_pad

logger = logging.getLogger(__name__)

__all__ = [
    "Comparison",
    "Generation",
    "compare",
    "format_side_by_side",
    "generate",
    "left_pad",
    "load_steering",
    "render",
]


class Generation(NamedTuple):
    """What :func:`generate` returns, one entry per prompt, in the order given."""

    texts: list[str]
    """Decoded continuations (special tokens removed; cut at the first end-of-sequence)."""
    token_ids: list[Int[Tensor, " n_new"]]
    """Generated token ids of each continuation, cut like ``texts`` (EOS excluded)."""
    prompt_ids: list[Int[Tensor, " n_prompt"]]
    """Token ids of each rendered prompt, without padding."""
    prompts: list[str]
    """The prompts as the model saw them (chat template applied)."""
    finished: list[bool]
    """True where the model emitted end-of-sequence before ``max_new_tokens``."""


class Comparison(NamedTuple):
    """Unsteered and steered continuations of the same prompts (see :func:`compare`)."""

    prompts: list[str]
    """The prompts as given by the user (before the chat template)."""
    unsteered: Generation
    steered: Generation


def render(
    handle: ModelHandle, prompts: Sequence[str], *, chat: bool = True, system: str | None = None
) -> list[str]:
    """The prompts as the model will see them: chat-templated, or as given.

    Args:
        handle: a :class:`steerlab.models.ModelHandle`.
        prompts: user messages (``chat=True``) or raw texts.
        chat: apply the chat template with a generation prompt.
        system: a system message (chat only); None keeps the template's default.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p:
            raise ValueError(f"prompt {i} is empty or not a string")
    if not chat:
        if system is not None:
            raise ValueError("a system message needs chat=True")
        return prompts
    return [handle.chat(p, system=system) for p in prompts]


def generate(
    handle: ModelHandle,
    prompts: Sequence[str],
    interventions: Any = None,
    *,
    chat: bool = True,
    system: str | None = None,
    max_new_tokens: int = 64,
    greedy: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    per_example: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Generation:
    """Generate continuations of ``prompts``, steered by ``interventions`` if given.

    Args:
        handle: a :class:`steerlab.models.ModelHandle` of a causal LM.
        prompts: user messages (``chat=True``) or raw texts.
        interventions: None, one intervention, or a list (applied in order; see
            :func:`steerlab.steering.steer`); with ``per_example=True``, one entry (an
            intervention, a list, or None) per prompt.
        chat: render each prompt with the chat template.
        system: system message for the chat template (None: the template's default).
        max_new_tokens: the most tokens generated per prompt.
        greedy: greedy decoding; False samples with ``temperature`` and ``top_p``.
        temperature: sampling temperature (sampling only).
        top_p: nucleus mass (sampling only).
        seed: seeds the sampling RNG (sampling only); the global RNG is restored afterwards.
        batch_size: prompts per ``generate`` call.
        per_example: ``interventions`` holds one entry per prompt.
        progress: called with the number of prompts finished after each batch.

    Returns:
        :class:`Generation`.
    """
    if not handle.is_causal:
        raise ValueError(f"{handle.model_id} is an encoder; generation needs a causal LM")
    check_int(max_new_tokens, "max_new_tokens")
    check_int(batch_size, "batch_size")
    check_int(seed, "seed", low=0)
    check_real(temperature, "temperature", low=0, low_open=True)
    check_real(top_p, "top_p", low=0, high=1, low_open=True)
    rendered = render(handle, prompts, chat=chat, system=system)
    if per_example and len(list(interventions)) != len(rendered):
        raise ValueError(
            f"per_example=True needs one entry per prompt: {len(list(interventions))} entries "
            f"for {len(rendered)} prompts"
        )
    if greedy:
        sampling = None
    else:
        if not (temperature > 0 and 0 < top_p <= 1):
            raise ValueError("sampling needs temperature > 0 and 0 < top_p <= 1")
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    device = handle.device
    rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    with rng:
        torch.manual_seed(seed)
        out = generate_tokens(handle, rendered, interventions, per_example=per_example,
                              max_new_tokens=max_new_tokens, batch_size=batch_size,
                              sampling=sampling, progress=progress)  # fmt: skip
    texts = [handle.tokenizer.decode(t, skip_special_tokens=True) for t in out.new_ids]
    return Generation(texts, out.new_ids, out.prompt_ids, rendered, out.finished)


def compare(
    handle: ModelHandle, prompts: Sequence[str], interventions: Any, **kwargs: Any
) -> Comparison:
    """Generate each prompt unsteered and steered with the same settings.

    Args:
        handle: the model handle.
        prompts: user messages (or raw texts with ``chat=False``).
        interventions: what to steer with (as in :func:`generate`).
        **kwargs: passed to :func:`generate` for both runs.
    """
    plain = generate(handle, prompts, None, **kwargs)
    steered = generate(handle, prompts, interventions, **kwargs)
    return Comparison(list(prompts), plain, steered)


def format_side_by_side(
    comparison: Comparison,
    width: int = 100,
    labels: tuple[str, str] = ("unsteered", "steered"),
) -> str:
    """Two wrapped text columns per prompt: unsteered on the left, steered on the right."""
    col = max(20, (width - 3) // 2)
    rule = "-" * col + "-+-" + "-" * col
    lines: list[str] = []
    for prompt, a, b in zip(comparison.prompts, comparison.unsteered.texts,
                            comparison.steered.texts):  # fmt: skip
        lines += [f"prompt: {prompt}", rule, f"{labels[0]:<{col}} | {labels[1]}", rule]
        left = _wrap(a, col)
        right = _wrap(b, col)
        for i in range(max(len(left), len(right))):
            x = left[i] if i < len(left) else ""
            y = right[i] if i < len(right) else ""
            lines.append(f"{x:<{col}} | {y}")
        lines.append("")
    return "\n".join(lines)


def _wrap(text: str, width: int) -> list[str]:
    out: list[str] = []
    for para in text.splitlines() or [""]:
        out += textwrap.wrap(para, width) or [""]
    return out


def load_steering(
    path: Any,
    *,
    alpha: float | None = None,
    layer: int | str | None = None,
    positions: str = "all",
    relative: bool = True,
) -> list[Any]:
    """Interventions from an artifact: a steering vector, a control-vector GGUF file, or any
    intervention.

    Args:
        path: a :class:`~steerlab.steering.vectors.SteeringVector` directory, a llama.cpp /
            repeng control-vector ``.gguf`` file (:func:`~steerlab.steering.gguf.import_gguf`;
            foreign files carry no norms, so pass ``relative=False``), or an intervention
            directory (:func:`~steerlab.interventions.kinds.load_intervention`).
        alpha: strength for a steering vector (required then); for a saved ``AddVector`` it
            replaces the stored α; other interventions take no α.
        layer: for a vector: a layer number, a site name, or ``"all"``; default its only layer.
        positions: where a vector is added (see :mod:`steerlab.positions`).
        relative: α is a fraction of the layer's mean activation norm (vectors only).
    """
    from pathlib import Path

    from steerlab.artifacts import read_cfg

    is_gguf = Path(path).suffix.lower() == ".gguf"
    if is_gguf or read_cfg(path).get("kind") == "steering_vector":
        from steerlab.steering.vectors import SteeringVector

        if is_gguf:
            from steerlab.steering.gguf import import_gguf

            sv = import_gguf(path)
        else:
            sv = SteeringVector.load(path)
        if alpha is None:
            raise ValueError("a steering vector needs a strength: pass alpha")
        check_real(alpha, "alpha")
        if layer is None and len(sv.layers) != 1:  # several layers (or, degenerate, none)
            raise ValueError(f"this vector has layers {list(sv.layers)}: choose one, or 'all'")
        if layer == "all":
            return sv.interventions(alpha, positions, relative=relative)
        layer = sv.layers[0] if layer is None else layer
        if isinstance(layer, str) and layer.isdigit():
            layer = int(layer)
        return [sv.intervention(layer, alpha, positions, relative=relative)]
    from steerlab.interventions.kinds import AddVector, load_intervention

    iv = load_intervention(path)
    if alpha is not None:
        if not isinstance(iv, AddVector):
            raise ValueError(f"a {iv.KIND} intervention has no strength alpha to set")
        check_real(alpha, "alpha")
        iv.alpha = float(alpha)
    if layer is not None:
        raise ValueError("layer applies to steering vectors; an intervention has its own site")
    return [iv]
