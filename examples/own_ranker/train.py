"""Train a small ranker on the table ``rankserve features`` wrote, export it twice for ``rankserve push``.

    python examples/own_ranker/train.py features.parquet --out artifacts/

writes ``artifacts/torchscript/`` (``model.pt``) and ``artifacts/onnx/`` (``model.onnx``), each
beside the ``features.yaml`` the table was made with: all a ``push --create`` needs. The model
takes ``cat`` (int64 [B, n_cat]) and ``dense`` (float32 [B, n_dense]) and gives ``score``
(a click probability, [B, 1]): one embedding per categorical column, an MLP over them and the
dense features, a sigmoid.
"""

from __future__ import annotations

import argparse
import shutil
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

HERE = Path(__file__).resolve().parent


class Ranker(torch.nn.Module):
    def __init__(self, sizes: list[int], n_dense: int, dim: int = 8) -> None:
        super().__init__()
        self.register_buffer("sizes", torch.tensor(sizes))  # a code past a column's size wraps around
        self.register_buffer("offsets", torch.tensor(np.cumsum([0, *sizes[:-1]])))  # one table, column after column
        self.emb = torch.nn.Embedding(sum(sizes), dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(len(sizes) * dim + n_dense, 64), torch.nn.ReLU(),
                                       torch.nn.Linear(64, 1))

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        e = self.emb(cat % self.sizes + self.offsets).flatten(1)
        return torch.sigmoid(self.mlp(torch.cat([e, dense], dim=1)))


def read_table(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The table's ``cat``, ``dense`` and ``label`` columns as tensors."""
    t = pq.read_table(path, columns=["cat", "dense", "label"])
    cat = torch.tensor(np.stack(t.column("cat").to_numpy(zero_copy_only=False)), dtype=torch.int64)
    dense = torch.tensor(np.stack(t.column("dense").to_numpy(zero_copy_only=False)), dtype=torch.float32)
    return cat, dense, torch.tensor(t.column("label").to_numpy(), dtype=torch.float32).reshape(-1, 1)


def train(cat: torch.Tensor, dense: torch.Tensor, label: torch.Tensor, *, epochs: int = 3,
          seed: int = 0) -> Ranker:
    torch.manual_seed(seed)
    model = Ranker((cat.max(dim=0).values + 1).tolist(), dense.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(epochs):
        total = 0.0
        for rows in torch.randperm(len(label)).split(512):
            loss = torch.nn.functional.binary_cross_entropy(model(cat[rows], dense[rows]), label[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(rows)
        print(f"epoch {epoch + 1}: log loss {total / len(label):.4f} (click rate {label.mean().item():.3f})")
    return model.eval()


def export(model: Ranker, cat: torch.Tensor, dense: torch.Tensor, features: Path, out: Path) -> None:
    """``out/torchscript/model.pt`` and ``out/onnx/model.onnx``, each with ``features.yaml``."""
    for kind in ("torchscript", "onnx"):
        (out / kind).mkdir(parents=True, exist_ok=True)
        shutil.copy(features, out / kind / "features.yaml")
    torch.jit.script(model).save(str(out / "torchscript" / "model.pt"))
    batch = {"cat": {0: "batch"}, "dense": {0: "batch"}, "score": {0: "batch"}}
    with warnings.catch_warnings():  # the TorchScript-based exporter needs no package beyond torch and onnx
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (cat[:2], dense[:2]), str(out / "onnx" / "model.onnx"), dynamo=False,
                          input_names=["cat", "dense"], output_names=["score"], dynamic_axes=batch)
    print(f"wrote {out / 'torchscript'} and {out / 'onnx'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", type=Path, help="the Parquet file rankserve features wrote")
    parser.add_argument("--out", type=Path, required=True, help="folder to write torchscript/ and onnx/ into")
    parser.add_argument("--features", type=Path, default=HERE / "features.yaml",
                        help="the declaration the table was written with (default: the one beside this script)")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    cat, dense, label = read_table(args.table)
    model = train(cat, dense, label, epochs=args.epochs)
    export(model, cat, dense, args.features, args.out)


if __name__ == "__main__":
    main()
