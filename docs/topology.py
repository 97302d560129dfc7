"""Draws docs/scale-out.png, the scale-out topology of docs/operations/scale-out.md: `python docs/topology.py`."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402


def box(ax, x, y, w, h, text, color):  # noqa: ANN001, ANN201
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=color, ec="#333", lw=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8)


def arrow(ax, a, b, text="", style="-|>"):  # noqa: ANN001, ANN201
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=10, lw=1, color="#333"))
    if text:
        ax.text((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, text, fontsize=7, ha="center", va="bottom", color="#333")


def main(out: Path = Path(__file__).with_name("scale-out.png")) -> None:
    fig, ax = plt.subplots(figsize=(11, 6.2))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 6.2)
    ax.axis("off")
    box(ax, 4.2, 5.5, 2.6, 0.5, "clients (HTTP :8000, gRPC :9000)\nService rankserve-serve-svc", "#eef")
    for i, x0 in enumerate((0.3, 5.7)):
        ax.add_patch(FancyBboxPatch((x0, 1.2), 5.0, 3.9, boxstyle="round,pad=0.03", fc="#f8f8f8", ec="#999",
                                    ls="--"))
        ax.text(x0 + 0.1, 4.95, f"GPU worker pod {i + 1} (one Ray node)", fontsize=9, weight="bold")
        box(ax, x0 + 0.2, 4.0, 2.2, 0.6, "HAProxy (Serve ingress)\nload-balances all replicas", "#dfd")
        box(ax, x0 + 0.2, 2.6, 2.2, 1.0, "rankserve replica\nadmission, EDF batcher,\nrecall, crossing (CuPy)",
            "#ffd")
        box(ax, x0 + 2.8, 2.6, 2.0, 1.0, "Triton sidecar\nuser tower, ranker\n(KIND_GPU)", "#fdd")
        box(ax, x0 + 0.2, 1.4, 4.6, 0.7, "followers: load pushed versions into this Triton,\n"
                                        "heartbeat + metrics snapshot beside the repository", "#eee")
        arrow(ax, (x0 + 1.3, 4.0), (x0 + 1.3, 3.6), "HTTP/gRPC")
        arrow(ax, (x0 + 2.4, 3.1), (x0 + 2.8, 3.1), "")
        ax.text(x0 + 2.6, 2.4, "gRPC + /dev/shm", fontsize=7, ha="center")
        arrow(ax, (5.5, 5.5), (x0 + 1.3, 4.6))
    arrow(ax, (2.6, 4.2), (6.9, 3.4), "", style="-|>")
    ax.text(4.7, 3.95, "any node's HAProxy reaches every replica", fontsize=7, ha="center", color="#555")
    box(ax, 2.5, 0.1, 6.0, 0.75, "model repository: one ReadWriteMany volume (versions, traffic.json, .nodes/)\n"
                                  "rankserve push: write version -> every live node loads it -> traffic moves", "#def")
    for x in (2.8, 8.2):
        arrow(ax, (x, 1.4), (x, 0.85), style="<|-|>")
    fig.tight_layout()
    fig.savefig(out, dpi=130)


if __name__ == "__main__":
    main()
