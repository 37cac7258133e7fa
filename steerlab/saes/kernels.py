"""Sparse autograd kernels of the TopK SAE: the encoder and decoder with sparse backwards.

A TopK SAE keeps ``k`` of ``d_sae`` latents per token, so every gradient except the encoder's
forward GEMM touches only ``batch·k`` (token, latent) pairs. These functions compute them as
sparse-dense products (``torch.sparse``: MKL on CPU, cuSPARSE on CUDA) instead of the dense
``[batch, d_sae]`` matmuls of plain autograd, and without materialising ``[batch, k, d]``
per-token products (what an ``index_add``-based backward does, sparsify's included). The dense
autograd path of :class:`steerlab.saes.sae.TopKSae` is their reference in the tests.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """``torch.sparse_csr_tensor`` without its "CSR support is in beta" warning (printed in
    every notebook that trains an SAE); the CSR products used here (sparse @ dense,
    ``sampled_addmm``) are tested against dense autograd in tests/saes/test_sae.py."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def _by_latent(idx: Tensor, values: Tensor, d_sae: int) -> Tensor:
    """Sparse CSR ``[d_sae, n]`` holding ``values[t, j]`` at ``(idx[t, j], t)``.

    The kept latents of a batch grouped by latent, so that ``_by_latent(idx, g, d_sae) @ y``
    is ``Σ_t g_tj y_t`` for every latent ``j`` at once: a sparse-dense matmul of
    ``batch·k·d`` multiply-adds that never materialises the ``[batch, k, d]`` products (which
    an ``index_add`` of per-token contributions does, at ~10x the time of the encoder GEMM on
    a CPU). TopK indices are distinct within a row, so no entry repeats. int32 indices select
    the fast sparse kernels (MKL on CPU).
    """
    n, k = idx.shape
    flat = idx.reshape(-1)
    # int32 keys sort ~20x faster than int64 on a CPU; the order inside a row is free
    order = flat.to(torch.int32).argsort()
    crow = torch.zeros(d_sae + 1, dtype=torch.int32, device=idx.device)
    crow[1:] = torch.bincount(flat, minlength=d_sae).cumsum(0)
    col = torch.div(order, k, rounding_mode="floor").to(torch.int32)
    return _csr(crow, col, values.reshape(-1)[order], (d_sae, n))


class TopKEncode(torch.autograd.Function):
    """``ReLU(TopK((x − b_dec) W_enc + b_enc))`` with a sparse backward.

    Only the ``k`` kept latents of each token carry gradient ``g_tj``, so (as in sparsify's
    fused encoder, but without materialising per-token products):

    - ``∂W_enc[:, j] = Σ_t g_tj (x_t − b_dec)``: a sparse-dense matmul, ``batch·k·d_in``
      multiply-adds instead of the dense ``batch·d_sae·d_in`` GEMM (:func:`_by_latent`);
    - ``∂b_enc[j] = Σ_t g_tj`` and ``∂b_dec = −W_enc ∂b_enc``: ``b_dec`` enters every token
      alike, so its gradient needs only the latent sums (a matvec, not the ``[batch, d_in]``
      input gradient);
    - ``∂x_t = Σ_j g_tj W_enc[:, j]`` (an ``embedding_bag``), only when ``x`` needs a gradient.

    The dense autograd path (:meth:`TopKSae.encode` with ``fused=False``) is the reference.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, b_dec: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> Any:
        sae_in = x - b_dec
        pre = torch.addmm(b_enc, sae_in, W_enc)
        vals, idx = pre.topk(k, dim=-1, sorted=False)
        vals = vals.relu()
        ctx.save_for_backward(sae_in, W_enc, vals, idx)
        ctx.mark_non_differentiable(idx)
        return vals, idx

    @staticmethod
    def backward(ctx: Any, grad_vals: Tensor, _grad_idx: Any) -> Any:
        sae_in, W_enc, vals, idx = ctx.saved_tensors
        # ReLU: no gradient where the output is 0. Under autocast the forward GEMM (and so
        # ``vals`` and their gradient) is in bfloat16/float16; the parameter gradients are
        # computed in the parameters' dtype.
        g = (grad_vals * (vals > 0)).to(sae_in.dtype)
        d_sae = W_enc.shape[1]
        grad_x = grad_b_dec = grad_W = grad_b = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            grad_b = g.new_zeros(d_sae).index_add_(0, idx.reshape(-1), g.reshape(-1))
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(idx, W_enc.T.contiguous(), per_sample_weights=g, mode="sum")
        if ctx.needs_input_grad[1]:
            grad_b_dec = -(W_enc @ grad_b)
        if ctx.needs_input_grad[2]:
            grad_W = (_by_latent(idx, g, d_sae) @ sae_in).T  # [d_sae, d_in] -> W_enc
        return grad_x, grad_b_dec, grad_W, grad_b if ctx.needs_input_grad[3] else None, None


class SparseDecode(torch.autograd.Function):
    """``Σ_j a_tj W_dec[i_tj]`` (an ``embedding_bag``) with a sparse backward.

    ``∂W_dec[j] = Σ_t a_tj ∂x̂_t`` is a sparse-dense matmul (:func:`_by_latent`) instead of
    ``embedding_bag``'s dense backward, which sorts and scatters ``batch·k`` rows;
    ``∂a_tj = ⟨W_dec[i_tj], ∂x̂_t⟩`` is ``∂x̂ W_decᵀ`` sampled at the kept entries only
    (``torch.sparse.sampled_addmm``, without the ``[batch, k, d]`` gather).
    """

    @staticmethod
    def forward(ctx: Any, acts: Tensor, idx: Tensor, W_dec: Tensor) -> Tensor:
        ctx.save_for_backward(acts, idx, W_dec)
        return F.embedding_bag(idx, W_dec, per_sample_weights=acts, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Any:
        acts, idx, W_dec = ctx.saved_tensors
        grad_acts = grad_W = None
        if ctx.needs_input_grad[0]:
            n, k = idx.shape
            crow = torch.arange(0, n * k + 1, k, dtype=torch.int32, device=idx.device)
            pattern = _csr(crow, idx.reshape(-1).to(torch.int32), acts.new_zeros(n * k),
                           (n, W_dec.shape[0]))  # fmt: skip
            sampled = torch.sparse.sampled_addmm(pattern, grad_out, W_dec.T, beta=0.0)
            grad_acts = sampled.values().reshape(n, k)
        if ctx.needs_input_grad[2]:
            grad_W = _by_latent(idx, acts, W_dec.shape[0]) @ grad_out
        return grad_acts, None, grad_W
