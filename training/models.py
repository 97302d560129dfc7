"""The two-tower recall model and the DCN-v2 ranking model (TorchScript-able)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DCNv2Ranker", "ItemTower", "UserTower"]


def _known(ids: torch.Tensor, n: int) -> torch.Tensor:
    """Ids an embedding of ``n`` rows can look up: one it has never seen (a shop, brand or category
    added to the catalogue after training) becomes 0, the unknown id."""
    return torch.where((ids >= 0) & (ids < n), ids, torch.zeros_like(ids))


class UserTower(nn.Module):
    """(user_cat int64 [B, 3], user_dense float32 [B, D]) -> L2-normalised embedding [B, E]."""

    def __init__(self, cardinalities: list[int], dense_dim: int, emb_dim: int = 32, field_dim: int = 8) -> None:
        super().__init__()
        self.cards = list(cardinalities)  # ids an embedding can look up (others: 0, unknown)
        self.embs = nn.ModuleList([nn.Embedding(c, field_dim) for c in cardinalities])
        self.mlp = nn.Sequential(nn.Linear(field_dim * len(cardinalities) + dense_dim, 128), nn.ReLU(),
                                 nn.Linear(128, emb_dim))

    def forward(self, user_cat: torch.Tensor, user_dense: torch.Tensor) -> torch.Tensor:
        parts = [user_dense]
        for i, emb in enumerate(self.embs):
            parts.append(emb(_known(user_cat[:, i], self.cards[i])))
        return nn.functional.normalize(self.mlp(torch.cat(parts, dim=1)), dim=1)


class ItemTower(nn.Module):
    """(item_cat int64 [B, 4], item_num float32 [B, 3], item_dense float32 [B, D]) -> embedding [B, E]."""

    def __init__(self, cardinalities: list[int], num_dim: int, dense_dim: int, emb_dim: int = 32,
                 field_dim: int = 8) -> None:
        super().__init__()
        self.cards = list(cardinalities)  # ids an embedding can look up (others: 0, unknown)
        self.embs = nn.ModuleList([nn.Embedding(c, field_dim) for c in cardinalities])
        self.mlp = nn.Sequential(nn.Linear(field_dim * len(cardinalities) + num_dim + dense_dim, 128), nn.ReLU(),
                                 nn.Linear(128, emb_dim))

    def forward(self, item_cat: torch.Tensor, item_num: torch.Tensor, item_dense: torch.Tensor) -> torch.Tensor:
        parts = [item_num, item_dense]
        for i, emb in enumerate(self.embs):
            parts.append(emb(_known(item_cat[:, i], self.cards[i])))
        return nn.functional.normalize(self.mlp(torch.cat(parts, dim=1)), dim=1)


class DCNv2Ranker(nn.Module):
    """DCN-v2: embeddings of every categorical column (crosses included) and the dense features,
    a cross network (x_{l+1} = x_0 * (W x_l + b) + x_l) beside a deep MLP; returns P(click) [B, 1]."""

    def __init__(self, cardinalities: list[int], dense_dim: int, field_dim: int = 8, n_cross: int = 2,
                 hidden: tuple[int, int] = (128, 64), sparse: bool = False) -> None:
        super().__init__()
        self.cards = list(cardinalities)  # ids an embedding can look up (others: 0, unknown)
        # sparse: the embeddings' gradients hold only the rows a batch looked up (torch.optim.SparseAdam),
        # so large hashed crosses cost per step what a batch touches, not their size
        self.embs = nn.ModuleList([nn.Embedding(c, field_dim, sparse=sparse) for c in cardinalities])
        width = field_dim * len(cardinalities) + dense_dim
        self.norm = nn.LayerNorm(dense_dim)
        self.cross = nn.ModuleList([nn.Linear(width, width) for _ in range(n_cross)])
        self.deep = nn.Sequential(nn.Linear(width, hidden[0]), nn.ReLU(), nn.Linear(hidden[0], hidden[1]), nn.ReLU())
        self.head = nn.Linear(width + hidden[1], 1)

    def logit(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        parts = [self.norm(dense)]
        for i, emb in enumerate(self.embs):
            parts.append(emb(_known(cat[:, i], self.cards[i])))
        x0 = torch.cat(parts, dim=1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.head(torch.cat([x, self.deep(x0)], dim=1))

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(cat, dense))
