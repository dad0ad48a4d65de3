"""Matching Networks.

Vinyals, Blundell, Lillicrap, Kavukcuoglu, Wierstra. "Matching Networks for One Shot Learning",
NeurIPS 2016, arXiv:1606.04080. A query's class distribution is an attention-weighted vote of the support
labels, the attention being a softmax over cosine similarities; full-context embeddings (FCE) optionally
re-encode the support set with a bidirectional LSTM and the query with an attention LSTM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from medmeta.methods.base import MethodOptions
from medmeta.methods.metric.common import SupportFeatureMethod


def matching_log_probs(
    query_features: Tensor,
    support_features: Tensor,
    support_labels: Tensor,
    n_way: int,
    scale: Tensor | float,
) -> Tensor:
    """Log class probabilities ``log sum_i a(q, s_i) [y_i = c]`` with ``a = softmax_i(scale * cos(q, s_i))``.

    Args:
        query_features: ``(..., n_query, d)``.
        support_features: ``(..., n_support, d)``.
        support_labels: ``(..., n_support)`` int64 in ``0..n_way-1``, every class present.
        n_way: number of classes.
        scale: multiplier of the cosine similarities (inverse softmax temperature).

    Returns:
        ``(..., n_query, n_way)`` log-probabilities (their softmax is the attention vote itself).
    """
    cosine = F.normalize(query_features, dim=-1) @ F.normalize(support_features, dim=-1).transpose(-1, -2)
    log_attention = F.log_softmax(cosine * scale, dim=-1)  # (..., n_query, n_support)
    member = F.one_hot(support_labels, n_way).bool()  # (..., n_support, n_way)
    votes = log_attention[..., :, :, None].masked_fill(
        ~member[..., None, :, :], float("-inf")
    )  # (..., n_query, n_support, n_way)
    return torch.logsumexp(votes, dim=-2)  # (..., n_query, n_way)


class FullContextEmbedding(nn.Module):
    """The FCE encoders of Vinyals et al. (appendix): ``g`` for the support set, ``f`` for queries.

    ``g(x_i, S) = x_i + h_fwd_i + h_bwd_i`` from a bidirectional LSTM over the support sequence.
    ``f(q, S)`` runs `steps` attention-LSTM reads: ``h_k, c_k = LSTM([q, r_{k-1}], (h_{k-1}, c_{k-1}))``,
    ``h_k += q``, ``r_k = sum_i softmax_i(h_k . g_i) g_i``, starting from ``h_0 = q``, ``c_0 = 0``.

    Args:
        dim: feature width d.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.query_cell = nn.LSTMCell(2 * dim, dim)

    def encode_support(self, support_features: Tensor) -> Tensor:
        """``(T, n_support, d)`` -> ``(T, n_support, d)``."""
        hidden, _ = self.support_lstm(support_features)  # (T, n_support, 2d)
        return support_features + hidden[..., : self.dim] + hidden[..., self.dim :]

    def encode_query(self, query_features: Tensor, encoded_support: Tensor, steps: int) -> Tensor:
        """``(T, n_query, d)`` queries read `steps` times from ``(T, n_support, d)`` -> ``(T, n_query, d)``."""
        t, n_query, d = query_features.shape
        flat_query = query_features.reshape(t * n_query, d)  # (T * n_query, d)
        h, c = flat_query, torch.zeros_like(flat_query)
        for _ in range(steps):
            attention = torch.softmax(
                h.view(t, n_query, d) @ encoded_support.transpose(-1, -2), dim=-1
            )  # (T, n_query, n_support)
            read = (attention @ encoded_support).reshape(t * n_query, d)  # (T * n_query, d)
            h, c = self.query_cell(torch.cat([flat_query, read], dim=-1), (h, c))
            h = h + flat_query
        return h.view(t, n_query, d)


class MatchingOptions(MethodOptions):
    """Options of `MatchingNet`.

    Attributes:
        scale: multiplier of the cosine similarity before the attention softmax. The paper's plain
            cosine is 1, which leaves the attention nearly uniform; 10 trains faster and calibrates better.
        learn_scale: make the scale a learnable parameter.
        fce: use full-context embeddings (two LSTMs of width d: about ``20 d^2`` extra parameters).
        fce_steps: attention-LSTM reads of each query; None means as many as support images (as in the
            authors' low-shot reference code).
    """

    scale: float = Field(10.0, gt=0.0)
    learn_scale: bool = False
    fce: bool = False
    fce_steps: int | None = Field(None, ge=1)


class MatchingNet(SupportFeatureMethod):
    """Vinyals et al. "Matching Networks for One Shot Learning", NeurIPS 2016, arXiv:1606.04080.

    Each query attends to every support embedding through a softmax over scaled cosine similarities;
    the class probabilities are the attention mass on each class. With ``fce=True`` both sets are
    re-embedded in the context of the whole support set (bidirectional LSTM and attention LSTM).

    Logits are log-probabilities, so the default query cross-entropy is the paper's loss.

    Example:
        >>> from medmeta.models import Conv4
        >>> method = MatchingNet(Conv4(in_channels=1, image_size=32), MatchingOptions(fce=True))
        >>> # logits = method.episode_logits(episode)  # (n_query, n_way) log-probabilities
    """

    Options = MatchingOptions
    options: MatchingOptions

    def __init__(self, backbone: nn.Module, options: MatchingOptions | None = None) -> None:
        super().__init__(backbone, options or MatchingOptions())
        scale = torch.tensor(float(self.options.scale))
        if self.options.learn_scale:
            self.scale: Tensor = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.fce: FullContextEmbedding | None = None
        if self.options.fce:
            dim = getattr(backbone, "out_features", None)
            if not isinstance(dim, int):
                raise ValueError(
                    f"fce=True needs the backbone's feature width, but {type(backbone).__name__} has no "
                    "integer `out_features`: set that attribute on the backbone or use fce=False"
                )
            self.fce = FullContextEmbedding(dim)

    def logits_from_features(
        self, support_features: Tensor, support_labels: Tensor, n_way: int, query_features: Tensor
    ) -> Tensor:
        if self.fce is not None:
            support_features = self.fce.encode_support(support_features)  # (T, n_support, d)
            steps = self.options.fce_steps or support_features.shape[1]
            query_features = self.fce.encode_query(query_features, support_features, steps)  # (T, n_query, d)
        return matching_log_probs(query_features, support_features, support_labels, n_way, self.scale)
