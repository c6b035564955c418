"""The table likelihood: per block of encoded features (model/table_schema.py's layout), a Gaussian for
numbers, a Gaussian masked where the value is missing plus a Bernoulli on the missing indicator, and a
categorical (softmax) per categorical column. Per feature, so a table's NLL breaks down by column."""

from __future__ import annotations

import torch

from model.losses import bernoulli_log_prob, gaussian_log_prob


def table_log_prob(params: torch.Tensor, x: torch.Tensor, log_var: torch.Tensor,
                   blocks: tuple[tuple[str, int], ...]) -> torch.Tensor:
    """log p(x|z) per encoded feature (..., F) from decoder outputs params (..., F) and log_var (F,).

    A masked value's Gaussian term is zero where its indicator says missing: the imputed 0 is not data.
    A categorical block's one-hot x picks its level's log-probability; the other features of the block add 0.
    """
    parts: list[torch.Tensor] = []
    offset = 0
    for kind, width in blocks:
        p, v = params[..., offset:offset + width], x[..., offset:offset + width]
        lv = log_var[offset:offset + width]
        if kind == "gaussian":
            parts.append(gaussian_log_prob(p, lv.expand_as(p), v))
        elif kind == "gaussian_masked":
            m = width // 2
            mean = p[..., :m]
            present = 1.0 - v[..., m:]
            parts.append(gaussian_log_prob(mean, lv[:m].expand_as(mean), v[..., :m]) * present)
            parts.append(bernoulli_log_prob(p[..., m:], v[..., m:]))
        else:  # categorical
            parts.append(v * torch.log_softmax(p, dim=-1))
        offset += width
    return torch.cat(parts, dim=-1)  # (..., F)


def table_mean(params: torch.Tensor, blocks: tuple[tuple[str, int], ...]) -> torch.Tensor:
    """E[x|z] per block: Gaussian means, missing probabilities, level probabilities (..., F)."""
    parts: list[torch.Tensor] = []
    offset = 0
    for kind, width in blocks:
        p = params[..., offset:offset + width]
        if kind == "gaussian":
            parts.append(p)
        elif kind == "gaussian_masked":
            parts += [p[..., :width // 2], torch.sigmoid(p[..., width // 2:])]
        else:
            parts.append(torch.softmax(p, dim=-1))
        offset += width
    return torch.cat(parts, dim=-1)
