"""Memory-augmented neural network (MANN) with least-recently-used access.

Santoro, Bartunov, Botvinick, Wierstra, Lillicrap. "One-shot Learning with Memory-Augmented Neural
Networks", ICML 2016, arXiv:1605.06065. The support set is read as a sequence by an LSTM controller that
writes to and reads from an external memory; labels arrive one step late, so the network must bind an
image to its label through the memory to classify later images.

Pure cores: `cosine_similarity`, `memory_read`, `least_used`, `lrua_write`, `update_usage`; the thin
classes are `MANNController` (the learned layers and one step) and `MANN` (the method).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from medmeta.errors import ConfigError
from medmeta.methods.base import FewShotMethod, MethodOptions
from medmeta.methods.functional import embed
from medmeta.methods.inner_loop import head_feature_dim
from medmeta.methods.metric.common import one_pass_episode_logits
from medmeta.tasks.episode import Episode, Support

#: Value of every memory entry before the first write (all zeros would make cosine similarities 0/0).
MEMORY_INIT = 1e-6
#: Initial write gate alpha: ``sigmoid(-3) = 0.05``, so early writes go to fresh (least-used) slots instead
#: of being smeared over the near-uniform read weights of an untrained controller.
WRITE_GATE_INIT = -3.0
#: Initial bias of the key strength: ``1 + softplus(4) = 5``, reads focused enough for keys to get a gradient.
STRENGTH_BIAS = 4.0
#: Largest ``batch * slots * width`` of one query chunk: bounds the per-query memory copies.
QUERY_CHUNK_ELEMENTS = 1 << 22


class MemoryState(NamedTuple):
    """Controller and memory after some steps, for a batch of B sequences.

    Attributes:
        memory: ``(B, slots, width)`` memory matrix ``M_t``.
        usage: ``(B, slots)`` usage weights ``w^u_t``.
        read_weights: ``(B, slots)`` read weights ``w^r_t``.
        read: ``(B, width)`` read vector ``r_t`` (fed to the controller at the next step).
        hidden: ``(B, controller_size)`` LSTM output ``h_t``.
        cell: ``(B, controller_size)`` LSTM cell ``c_t``.
    """

    memory: Tensor
    usage: Tensor
    read_weights: Tensor
    read: Tensor
    hidden: Tensor
    cell: Tensor


def cosine_similarity(keys: Tensor, memory: Tensor, eps: float = 1e-8) -> Tensor:
    """``K(k, M(i)) = k . M(i) / (||k|| ||M(i)||)``: keys ``(B, W)``, memory ``(B, S, W)`` -> ``(B, S)``."""
    dots = (memory @ keys[:, :, None]).squeeze(-1)  # (B, S)
    norms = memory.norm(dim=-1) * keys.norm(dim=-1, keepdim=True)  # (B, S)
    return dots / norms.clamp_min(eps)


def memory_read(memory: Tensor, keys: Tensor, strength: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Content-based read: softmax over the cosine similarities of the key with every memory row.

    Args:
        memory: ``(B, S, W)``.
        keys: ``(B, W)`` read keys.
        strength: ``(B,)`` factors of the similarities before the softmax (None: 1, the paper's read).

    Returns:
        ``(read vector (B, W), read weights (B, S))``.
    """
    similarity = cosine_similarity(keys, memory)  # (B, S)
    if strength is not None:
        similarity = similarity * strength[:, None]
    weights = similarity.softmax(-1)  # (B, S)
    return (weights[:, None, :] @ memory).squeeze(1), weights  # (B, W), (B, S)


def least_used(usage: Tensor) -> Tensor:
    """``w^lu``: one-hot ``(B, S)`` of the least-used slot (the first of ties), from usage ``(B, S)``.

    With one read head the paper's ``w^lu(i) = [w^u(i) <= m(w^u, 1)]`` marks the smallest usage; ties are
    broken towards the lowest index so that exactly one slot is marked.
    """
    return F.one_hot(usage.argmin(-1), usage.shape[-1]).to(usage.dtype)


def lrua_write(
    memory: Tensor, usage: Tensor, read_weights: Tensor, content: Tensor, gate: Tensor | float
) -> tuple[Tensor, Tensor]:
    """Least-recently-used access write (Santoro et al. 2016, eq. 6-8).

    The least-used slot of ``w^u_{t-1}`` is zeroed, then ``M_t(i) = M_{t-1}(i) + w^w_t(i) a_t`` with
    ``w^w_t = gate * w^r_{t-1} + (1 - gate) * w^lu_{t-1}`` (``gate = sigmoid(alpha)``): either the slot
    read last (update a memory) or the least-used one (store a new memory).

    Args:
        memory: ``(B, S, W)`` ``M_{t-1}``.
        usage: ``(B, S)`` ``w^u_{t-1}``.
        read_weights: ``(B, S)`` ``w^r_{t-1}``.
        content: ``(B, W)`` vector written, ``a_t``.
        gate: ``sigmoid(alpha)``, a scalar in ``(0, 1)``.

    Returns:
        ``(M_t (B, S, W), write weights w^w_t (B, S))``.
    """
    lu = least_used(usage)  # (B, S)
    write_weights = gate * read_weights + (1 - gate) * lu  # (B, S)
    cleared = memory * (1 - lu)[:, :, None]  # (B, S, W)
    return cleared + write_weights[:, :, None] * content[:, None, :], write_weights


def update_usage(usage: Tensor, read_weights: Tensor, write_weights: Tensor, decay: float) -> Tensor:
    """``w^u_t = gamma * w^u_{t-1} + w^r_t + w^w_t`` (all ``(B, S)``)."""
    return decay * usage + read_weights + write_weights


class SupportRead(NamedTuple):
    """What `MANN.read_support` returns for T episodes.

    Attributes:
        state: after the last support step (batch T).
        last_label: ``(T, rows)`` one-hot label of the last support image (the queries' label input).
        logits: ``(T, n_support, n_way)`` each step's prediction, in presentation order.
        labels: ``(T, n_support)`` the support labels in presentation order.
    """

    state: MemoryState
    last_label: Tensor
    logits: Tensor
    labels: Tensor


class MANNController(nn.Module):
    """The learned part of a MANN: an LSTM controller, its read key, write vector and output layers.

    At each step the LSTM sees ``[x_t, one-hot y_{t-1}, r_{t-1}]`` and emits a read key ``k_t`` and a write
    vector ``a_t`` (both ``tanh``); the write happens first, then the read from the new memory, and the
    logits come from ``[h_t, r_t]``. The paper writes the key itself; a separate write vector lets a step
    store the previous image's binding to its label without reading its own key straight back.

    Args:
        feature_dim: width d of the image embeddings.
        n_way: label one-hot width and output rows.
        hidden: LSTM units.
        slots: memory rows S.
        width: memory columns W.
        key_strength: multiply the read similarities by ``1 + softplus(beta_t)`` from the controller
            (the Neural Turing Machine's key strength, Graves et al. 2014); False is the paper's read.
    """

    def __init__(
        self, feature_dim: int, n_way: int, hidden: int, slots: int, width: int, key_strength: bool
    ) -> None:
        super().__init__()
        self.n_way, self.slots, self.width = n_way, slots, width
        self.lstm = nn.LSTMCell(feature_dim + n_way + width, hidden)
        self.read_key = nn.Linear(hidden, width)
        self.write_content = nn.Linear(hidden + n_way, width)
        self.strength = nn.Linear(hidden, 1) if key_strength else None
        if self.strength is not None:
            with torch.no_grad():
                self.strength.bias.fill_(STRENGTH_BIAS)
        self.write_gate = nn.Parameter(torch.tensor(WRITE_GATE_INIT))  # alpha
        self.output = nn.Linear(hidden + width, n_way)

    def initial_state(self, batch: int, like: Tensor) -> MemoryState:
        """Empty memory (every entry `MEMORY_INIT`), zero usage, reads and LSTM state, on `like`'s device."""
        h = self.lstm.hidden_size
        zeros = like.new_zeros
        return MemoryState(
            memory=like.new_full((batch, self.slots, self.width), MEMORY_INIT),
            usage=zeros(batch, self.slots),
            read_weights=zeros(batch, self.slots),
            read=zeros(batch, self.width),
            hidden=zeros(batch, h),
            cell=zeros(batch, h),
        )

    def step(
        self, state: MemoryState, features: Tensor, previous_labels: Tensor, decay: float
    ) -> tuple[MemoryState, Tensor]:
        """One time step.

        Args:
            state: the state after the previous step.
            features: ``(B, d)`` embeddings of this step's images.
            previous_labels: ``(B, n_way)`` one-hot labels of the previous step's images (zeros at step 1).
            decay: usage decay gamma.

        Returns:
            ``(new state, logits (B, n_way))``.
        """
        inputs = torch.cat([features, previous_labels, state.read], -1)  # (B, d + n_way + W)
        hidden, cell = self.lstm(inputs, (state.hidden, state.cell))  # (B, hidden) each
        key = torch.tanh(self.read_key(hidden))  # (B, W)
        content = torch.tanh(self.write_content(torch.cat([state.hidden, previous_labels], -1)))  # (B, W)
        strength = None
        if self.strength is not None:
            strength = 1 + F.softplus(self.strength(hidden)).squeeze(-1)  # (B,)
        gate = torch.sigmoid(self.write_gate)
        memory, write_weights = lrua_write(state.memory, state.usage, state.read_weights, content, gate)
        read, read_weights = memory_read(memory, key, strength)
        usage = update_usage(state.usage, read_weights, write_weights, decay)
        logits = self.output(torch.cat([hidden, read], -1))  # (B, n_way)
        return MemoryState(memory, usage, read_weights, read, hidden, cell), logits


class MANNOptions(MethodOptions):
    """Options of `MANN`.

    Attributes:
        n_way: label inputs and output rows (episodes may have fewer classes, not more).
        controller_size: LSTM units (paper: 200).
        memory_slots: memory rows (paper: 128); at least the support size keeps every image.
        memory_width: memory columns (paper: 40).
        usage_decay: decay gamma of the usage weights (how fast unread, unwritten slots become free).
        key_strength: sharpen reads with a learned key strength (see `MANNController`).
        sequence_loss: meta-train on every step's prediction, support images included (each predicted
            before its label arrives), as the paper does; False: on the queries only.
        feature_dim: width of the backbone's output (None: the backbone's ``out_features``).
        shuffle_seed: seed of the support order in eval mode (training draws a new order per episode
            from torch's global generator, which the training loop seeds).
    """

    n_way: int = Field(5, ge=2)
    controller_size: int = Field(200, ge=1)
    memory_slots: int = Field(128, ge=1)
    memory_width: int = Field(40, ge=1)
    usage_decay: float = Field(0.95, ge=0.0, le=1.0)
    key_strength: bool = True
    sequence_loss: bool = True
    feature_dim: int | None = Field(None, ge=1)
    shuffle_seed: int = Field(0, ge=0)


@dataclass(frozen=True)
class MANNPredictor:
    """A task read into memory: each query is one more step from the post-support state.

    Attributes:
        method: whose backbone and controller are used (never modified).
        state: the state after the support sequence, batch of 1.
        last_label: ``(1, n_way_rows)`` one-hot label of the last support image.
        n_way: classes of the task.
    """

    method: MANN
    state: MemoryState
    last_label: Tensor
    n_way: int

    def predict(self, query_images: Tensor) -> Tensor:
        """``(n_query, C, *spatial)`` -> logits ``(n_query, n_way)``; queries never see each other."""
        features = embed(self.method.backbone, query_images)[None]  # (1, n_query, d)
        return self.method.query_logits(self.state, self.last_label, features, self.n_way)[0]


class MANN(FewShotMethod):
    """Santoro et al. "One-shot Learning with Memory-Augmented Neural Networks", ICML 2016, arXiv:1605.06065.

    The backbone embeds each image; an LSTM controller reads the shuffled support set as a sequence whose
    step t sees image t with the one-hot label of image t-1, writing to an external memory with
    least-recently-used access and reading it by cosine similarity.

    Queries: each query is presented as the step after the last support image, with that image's label
    (the paper's one-step offset: a query's own label is never seen), starting from the post-support
    state. Queries are stepped independently and in parallel, so a query's logits never depend on the
    other queries. Labels are tied to input and output positions: ``permutation_invariant`` is False.
    The support order is random in training and fixed by ``shuffle_seed`` in eval mode. The backbone is the
    same for every task, so evaluation may score cached features (``frozen_backbone``).

    Example:
        >>> from medmeta.models import Conv4
        >>> method = MANN(Conv4(in_channels=1, image_size=28), MANNOptions(n_way=5))
        >>> # logits = method.adapt(episode.support).predict(episode.query_images)  # (n_query, n_way)
    """

    Options = MANNOptions
    options: MANNOptions
    permutation_invariant: ClassVar[bool] = False
    frozen_backbone: ClassVar[bool] = True

    def __init__(self, backbone: nn.Module, options: MANNOptions | None = None) -> None:
        super().__init__(backbone, options or MANNOptions())
        opts = self.options
        self.controller = MANNController(
            head_feature_dim(backbone, opts.feature_dim),
            opts.n_way,
            opts.controller_size,
            opts.memory_slots,
            opts.memory_width,
            opts.key_strength,
        )

    def _check_ways(self, n_way: int) -> None:
        if n_way > self.options.n_way:
            raise ConfigError(
                f"the episode has {n_way} classes but MANN has n_way={self.options.n_way} label positions: "
                f"set the method option n_way={n_way} (or more) and meta-train again"
            )

    def support_order(self, episodes: int, n_support: int, device: torch.device) -> Tensor:
        """``(episodes, n_support)`` presentation orders: random per episode in training, else seeded."""
        if self.training:
            orders = [torch.randperm(n_support) for _ in range(episodes)]
            return torch.stack(orders).to(device)
        g = torch.Generator().manual_seed(self.options.shuffle_seed)
        return torch.randperm(n_support, generator=g).to(device).expand(episodes, -1)

    def read_support(self, support_features: Tensor, support_labels: Tensor, n_way: int) -> SupportRead:
        """Run the support sequences of T episodes through controller and memory.

        Args:
            support_features: ``(T, n_support, d)``.
            support_labels: ``(T, n_support)`` int64 in ``0..n_way-1``.
            n_way: classes per episode.

        Returns:
            The state after the last support step (batch T) and what the steps saw and predicted.
        """
        self._check_ways(n_way)
        t, n_support, _ = support_features.shape
        order = self.support_order(t, n_support, support_features.device)  # (T, n_support)
        features = support_features.gather(1, order[:, :, None].expand_as(support_features))  # (T, n, d)
        labels = support_labels.gather(1, order)  # (T, n)
        one_hot = F.one_hot(labels, self.options.n_way).to(features.dtype)  # (T, n, rows)
        previous = torch.cat([torch.zeros_like(one_hot[:, :1]), one_hot[:, :-1]], 1)  # (T, n, rows)
        state = self.controller.initial_state(t, features)
        logits = []
        for step in range(n_support):
            state, out = self.controller.step(
                state, features[:, step], previous[:, step], self.options.usage_decay
            )
            logits.append(out[:, :n_way])  # (T, n_way)
        return SupportRead(state, one_hot[:, -1], torch.stack(logits, 1), labels)

    def query_logits(
        self, state: MemoryState, last_label: Tensor, query_features: Tensor, n_way: int
    ) -> Tensor:
        """Logits ``(T, n_query, n_way)``: each query one step from the post-support `state` (batch T).

        Args:
            state: from `read_support`.
            last_label: ``(T, rows)`` from `read_support`.
            query_features: ``(T, n_query, d)``.
            n_way: classes per episode.
        """
        self._check_ways(n_way)
        t, n_query = query_features.shape[:2]
        per_query = self.options.memory_slots * self.options.memory_width * t
        chunk = max(1, QUERY_CHUNK_ELEMENTS // per_query)
        out = []
        for start in range(0, n_query, chunk):
            q = query_features[:, start : start + chunk]  # (T, c, d)
            c = q.shape[1]
            expanded = MemoryState(*(x[:, None].expand(t, c, *x.shape[1:]).flatten(0, 1) for x in state))
            labels = last_label[:, None].expand(t, c, -1).flatten(0, 1)  # (T*c, rows)
            _, logits = self.controller.step(expanded, q.flatten(0, 1), labels, self.options.usage_decay)
            out.append(logits[:, :n_way].view(t, c, n_way))  # (T, c, n_way)
        return torch.cat(out, 1)

    def adapt(self, support: Support, query_images: Tensor | None = None) -> MANNPredictor:
        features = embed(self.backbone, support.images)[None]  # (1, n_support, d)
        read = self.read_support(features, support.labels[None], support.n_way)
        return MANNPredictor(self, read.state, read.last_label, support.n_way)

    def logits_from_features(
        self, support_features: Tensor, support_labels: Tensor, n_way: int, query_features: Tensor
    ) -> Tensor:
        read = self.read_support(support_features, support_labels, n_way)
        return self.query_logits(read.state, read.last_label, query_features, n_way)

    def episode_logits(self, episode: Episode) -> Tensor:
        return one_pass_episode_logits(self, episode)

    def episode_loss(self, episode: Episode) -> Tensor:
        """Cross-entropy of the queries, and with ``sequence_loss`` of every support step too (each support
        image is predicted before its label arrives, as in the paper's training)."""
        if not self.options.sequence_loss:
            return super().episode_loss(episode)
        n_support = episode.support_images.shape[0]
        images = torch.cat([episode.support_images, episode.query_images])  # (n_support + n_query, C, ...)
        features = embed(self.backbone, images)[None]  # (1, n_support + n_query, d)
        read = self.read_support(features[:, :n_support], episode.support_labels[None], episode.n_way)
        queries = self.query_logits(read.state, read.last_label, features[:, n_support:], episode.n_way)
        logits = torch.cat([read.logits[0], queries[0]])  # (n_support + n_query, n_way)
        return F.cross_entropy(logits, torch.cat([read.labels[0], episode.query_labels]))
