"""The metrics a steering evaluation is built from, each a small function with a closed form.

- :func:`vader_compound` — VADER's compound sentiment in ``[-1, 1]`` (Hutto & Gilbert 2014),
  from the ``vaderSentiment`` lexicon that ships with the package.
- :func:`keyword_hits` — whether a text mentions any keyword (whole words, case-insensitive).
- :func:`repetition_rate` — ``seq-rep-n = 1 − |unique n-grams| / |n-grams|`` of one text's
  words (Welleck et al. 2019, "Neural text generation with unlikelihood training").
- :func:`continuation_scores` — per-token negative log-likelihood of a continuation given a
  prefix (its prompt, or a generic prefix) under the (unsteered) model (:func:`steerlab.interventions.loss.lm_loss` with a loss
  mask), and optionally each continuation token's projection on a direction at a site;
  perplexity is ``exp(mean NLL)``.
- :func:`embed` / :func:`cosine` — sentence embeddings as sentence-transformers computes them
  for all-MiniLM-L6-v2: mean of the last layer over the attended tokens ([CLS] and [SEP]
  included), L2-normalised.
- :func:`relevance_ratio` — ``clip(s_b / max(s0_b, floor), 0, 1)``: a response's similarity to
  its prompt relative to the unsteered response's.
- :func:`fluency_score` — ``min(1, PPL₀ / ppl_b) · (1 − rep_b)``, 0 for an empty response.
- :func:`harmonic_mean` — AxBench's combination of judge scores: zero if any part is zero.
- :func:`bootstrap_ci` — the mean of per-prompt values with a percentile bootstrap interval.
- :func:`token_projections` — the projection of every token of a text on a direction.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, cast

import torch
from jaxtyping import Float, Int
from torch import Tensor
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from steerlab.capture import capture
from steerlab.interventions.loss import lm_loss
from steerlab.models import ModelHandle
from steerlab.sites import hf_location, parse_site

__all__ = [
    "ContinuationScores",
    "Interval",
    "bootstrap_ci",
    "TokenProjections",
    "continuation_scores",
    "cosine",
    "embed",
    "fluency_score",
    "harmonic_mean",
    "keyword_hits",
    "relevance_ratio",
    "repetition_rate",
    "token_projections",
    "vader_compound",
    "words",
]

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens: ``\\w+`` runs and single other characters."""
    return _WORD.findall(text.lower())


@functools.lru_cache(maxsize=1)
def _vader() -> SentimentIntensityAnalyzer:
    # built once: the constructor reads the lexicon file (~7,500 entries)
    return SentimentIntensityAnalyzer()


def vader_compound(texts: Sequence[str]) -> Float[Tensor, " n"]:
    """VADER compound score of each text (``[-1, 1]``; 0 for an empty text)."""
    sia = _vader()
    return torch.tensor([sia.polarity_scores(t)["compound"] for t in texts], dtype=torch.float64)


def keyword_hits(texts: Sequence[str], keywords: Iterable[str]) -> Float[Tensor, " n"]:
    """1.0 for each text that contains any keyword as a whole word (case-insensitive), else 0.

    A keyword may be several words ("stock market"); it matches the same word sequence.
    """
    keys = [tuple(words(k)) for k in keywords]
    keys = [k for k in keys if k]
    if not keys:
        raise ValueError("no keywords")
    out = []
    for t in texts:
        w = words(t)
        grams = {tuple(w[i : i + len(k)]) for k in keys for i in range(len(w) - len(k) + 1)}
        out.append(float(any(k in grams for k in keys)))
    return torch.tensor(out, dtype=torch.float64)


def repetition_rate(text: str, n: int = 4) -> float:
    """Fraction of the text's word n-grams that repeat an earlier one: ``1 − unique/total``.

    Words are :func:`words` tokens. A text with fewer than ``n`` words has no n-gram and a rate
    of 0. Default ``n = 4`` as Welleck et al.'s seq-rep-4; 1.0 is impossible (the first n-gram
    is always new), a text that loops one word gives ``1 − 1/(len − n + 1)``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    w = words(text)
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def harmonic_mean(parts: Float[Tensor, "... k"]) -> Float[Tensor, " *batch"]:
    """Harmonic mean over the last axis, ``k / Σ 1/x_i``; 0 where any part is 0 (AxBench).

    Parts must be non-negative.
    """
    parts = torch.as_tensor(parts, dtype=torch.float64)
    if (parts < 0).any() or not torch.isfinite(parts).all():
        raise ValueError("harmonic_mean needs finite non-negative parts")
    k = parts.shape[-1]
    zero = (parts == 0).any(-1)
    safe = torch.where(parts == 0, torch.ones_like(parts), parts)
    return torch.where(zero, torch.zeros_like(zero, dtype=parts.dtype), k / (1 / safe).sum(-1))


class Interval(NamedTuple):
    """A mean and its confidence interval."""

    mean: float
    lo: float
    hi: float


def bootstrap_ci(
    values: Float[Tensor, " n"], *, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> Interval:
    """Mean of ``values`` with a percentile bootstrap interval (resampling the values).

    For per-prompt score differences (paired by prompt) this is the interval of the mean
    difference; it makes no normality assumption, which matters for scores clipped to
    ``[0, 1]``. The generator is seeded, so an interval is reproducible.
    """
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    x = x[~x.isnan()]
    if len(x) == 0:
        raise ValueError("bootstrap_ci needs at least one non-NaN value")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(x), (n_boot, len(x)), generator=g)
    means = x[idx].mean(1)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(means, q).tolist()
    return Interval(float(x.mean()), lo, hi)


class ContinuationScores(NamedTuple):
    """Per-token scores of continuations under a model, one tensor per continuation."""

    nll: list[Float[Tensor, " n_new"]]
    """``−log p(y_t | prompt, y_<t)`` of every continuation token (float64)."""
    projections: list[Float[Tensor, " n_new"]] | None
    """``⟨h_t, v̂⟩`` at the site for every continuation token, when a direction was given."""

    def perplexity(self) -> Float[Tensor, " n"]:
        """``exp(mean NLL)`` of each continuation; NaN for an empty one."""
        return torch.stack([x.mean().exp() if len(x) else torch.tensor(float("nan"),
                            dtype=torch.float64) for x in self.nll])  # fmt: skip


def continuation_scores(
    handle: ModelHandle,
    prompt_ids: Sequence[Int[Tensor, " n_prompt"]],
    continuation_ids: Sequence[Int[Tensor, " n_new"]],
    *,
    site: str | None = None,
    direction: Float[Tensor, " d"] | None = None,
    batch_size: int = 16,
) -> ContinuationScores:
    """Score each continuation given its prompt with one forward pass of the model as it is.

    Call it outside any ``steer`` context to score under the unsteered model. Sequences are
    right-padded; the per-token losses are :func:`steerlab.interventions.loss.lm_loss`'s with
    a loss mask on the continuation tokens (the prediction of token ``t`` comes from the logits
    at ``t − 1``).

    Args:
        handle: the causal LM handle.
        prompt_ids: the prompt tokens of each example (as generation saw them).
        continuation_ids: the continuation tokens to score.
        site: with ``direction``: also read each continuation token's activation there.
        direction: ``[d]``; projections are on ``direction / ‖direction‖``.
        batch_size: sequences per forward.
    """
    if len(prompt_ids) != len(continuation_ids):
        raise ValueError("one continuation per prompt")
    if (site is None) != (direction is None):
        raise ValueError("pass both site and direction, or neither")
    v = None
    store: dict[str, Tensor] = {}
    hook = None
    if site is not None and direction is not None:
        v = (direction.double() / torch.linalg.vector_norm(direction.double())).to(handle.device)
        loc = hf_location(handle, parse_site(site, handle.n_layers))

        def record(_m: Any, args: tuple, kwargs: dict, output: Any = None) -> None:
            x = output if loc.io == "output" else (args[0] if args else kwargs["hidden_states"])
            store["h"] = x[0] if isinstance(x, (tuple, list)) else x

        if loc.io == "output":
            hook = loc.module.register_forward_hook(lambda m, a, o: record(m, a, {}, o))
        else:
            hook = loc.module.register_forward_pre_hook(
                lambda m, a, k: record(m, a, k), with_kwargs=True
            )
    pad = handle.tokenizer.pad_token_id or 0
    nll: list[Tensor] = []
    proj: list[Tensor] = []
    try:
        for s in range(0, len(prompt_ids), batch_size):
            P = [torch.as_tensor(p).long() for p in prompt_ids[s : s + batch_size]]
            C = [torch.as_tensor(c).long() for c in continuation_ids[s : s + batch_size]]
            seqs = [torch.cat([p, c]) for p, c in zip(P, C)]
            T = max(2, max(len(x) for x in seqs))
            ids = torch.full((len(seqs), T), pad, dtype=torch.long)
            am = torch.zeros(len(seqs), T, dtype=torch.long)
            scored = torch.zeros(len(seqs), T, dtype=torch.bool)
            for b, (x, p) in enumerate(zip(seqs, P)):
                ids[b, : len(x)], am[b, : len(x)] = x, 1
                scored[b, len(p) : len(x)] = True
            # one forward for the whole batch: the hook above sees the same call
            res = lm_loss(handle, ids, attention_mask=am, loss_mask=scored,
                          batch_size=len(seqs), reduction="none")  # fmt: skip
            per_token = cast(Tensor, res.per_token)  # reduction="none" returns it
            for b, (p, c) in enumerate(zip(P, C)):
                n0, n = len(p), len(c)
                # column t holds the loss of token t + 1
                nll.append(per_token[b, n0 - 1 : n0 - 1 + n].double())
                if v is not None:
                    proj.append((store["h"][b, n0 : n0 + n].double() @ v).cpu())
    finally:
        if hook is not None:
            hook.remove()
    return ContinuationScores(nll, proj if v is not None else None)


def embed(
    encoder: Any, texts: Sequence[str], *, batch_size: int = 32, max_length: int = 256
) -> Float[Tensor, " *batch"]:
    """Sentence embeddings: mean-pooled last layer over attended tokens, L2-normalised.

    This is what sentence-transformers computes for all-MiniLM-L6-v2 (``1_Pooling``: mean
    tokens; ``2_Normalize``; ``max_seq_length`` 256), including the [CLS]/[SEP] tokens.

    Args:
        encoder: an encoder handle, e.g. ``load_model("minilm-l6")``.
        texts: strings (an empty string embeds its [CLS] [SEP] pair).
        batch_size: texts per forward.
        max_length: truncate longer texts (in encoder tokens).
    """
    if encoder.is_causal:
        raise ValueError(f"{encoder.model_id} is a causal LM; pass an encoder (minilm-l6)")
    tok = encoder.tokenizer
    out = []
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            enc = tok(list(texts[s : s + batch_size]), padding=True, truncation=True,
                      max_length=max_length, return_tensors="pt").to(encoder.device)  # fmt: skip
            h = encoder.model(**enc).last_hidden_state.double()  # [batch, pos, d]
            m = enc["attention_mask"][..., None].double()
            mean = (h * m).sum(1) / m.sum(1).clamp_min(1)
            out.append(torch.nn.functional.normalize(mean, dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0, dtype=torch.float64)


def cosine(a: Float[Tensor, "n d"], b: Float[Tensor, "n d"]) -> Float[Tensor, " n"]:
    """Row-wise cosine similarity."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def relevance_ratio(
    similarity: Float[Tensor, " n"], reference: Float[Tensor, " n"], floor: float = 0.1
) -> Float[Tensor, " n"]:
    """``r_b = clip(s_b / max(s0_b, floor), 0, 1)``: prompt similarity relative to a reference.

    ``s_b`` is the cosine of a response's embedding with its prompt's, ``s0_b`` the same for
    the unsteered response to that prompt. The unsteered response scores 1 (when ``s0_b >=
    floor``), a response as related to the prompt as it scores 1, an unrelated one about 0.
    ``floor`` keeps the ratio finite when the unsteered response is itself unrelated to the
    prompt (MiniLM cosines of unrelated sentences lie around 0–0.1).
    """
    if not floor > 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    s, s0 = torch.as_tensor(similarity).double(), torch.as_tensor(reference).double()
    if s.shape != s0.shape:
        raise ValueError(f"similarity {tuple(s.shape)} and reference {tuple(s0.shape)} differ")
    return (s / s0.clamp_min(floor)).clamp(0, 1)


def fluency_score(
    nll_sum: Float[Tensor, " n"],
    n_tokens: Float[Tensor, " n"],
    repetition: Float[Tensor, " n"],
    ppl_reference: float,
) -> Float[Tensor, " n"]:
    """``f_b = min(1, PPL₀ / ppl_b) · (1 − rep_b)`` with ``ppl_b = exp(nll_sum_b / n_b)``.

    ``PPL₀`` is a reference perplexity (the unsteered responses' corpus perplexity), so
    unsteered text scores about 1. A response without tokens scores 0.
    """
    nll, n = torch.as_tensor(nll_sum).double(), torch.as_tensor(n_tokens).double()
    rep = torch.as_tensor(repetition).double()
    ppl = torch.where(n > 0, (nll / n.clamp_min(1)).exp(), torch.full_like(nll, float("inf")))
    f = (ppl_reference / ppl).clamp(max=1) * (1 - rep)
    return torch.where(n > 0, f, torch.zeros_like(f))


class TokenProjections(NamedTuple):
    """Each token of a text with its projection on a direction."""

    tokens: list[str]
    """Token strings (decoded one by one)."""
    scores: Float[Tensor, " pos"]
    """``⟨h_t, v̂⟩`` at the site."""


def token_projections(
    handle: ModelHandle, text: str, direction: Float[Tensor, " d"], site: str
) -> TokenProjections:
    """Project every token of ``text`` (tokenised as steerlab captures do) on ``direction``."""
    cap = capture(handle, [text], site)
    h = cap[site].double()
    v = direction.double().to(h.device)
    scores = h @ (v / torch.linalg.vector_norm(v))
    ids = cap.token_ids.tolist()
    toks = [handle.tokenizer.decode([i]) for i in ids]
    return TokenProjections(toks, scores.cpu())
