"""Evaluation galleries: overlays people would rather see than read (`coreseg.eval --gallery`): the best and worst
single scans by Dice, and composite questions with the model's mask beside the named tile's truth."""
from __future__ import annotations

import numpy as np

from coreseg.overlay import draw_overlay


def _save_panels(panels: list[tuple[np.ndarray, str]], path: str, title: str, columns: int = 4) -> None:
    """Overlay images with a title each, in rows of `columns`, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4.3 * rows), squeeze=False)
    for ax, (image, label) in zip(axes.flat, panels):
        ax.imshow(image)
        ax.set_title(label, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_gallery(examples: list[dict], path: str, per_side: int = 4) -> None:
    """Best and worst probe overlays (red: prediction, green: expert outline, yellow: boxes)."""
    ranked = sorted(examples, key=lambda e: e["dice"])
    chosen = ranked[::-1][:per_side] + ranked[:per_side]
    _save_panels([(draw_overlay(ex["image"], ex["mask"], ex["boxes"], truth=ex["truth"]),
                   f"{ex['item'].set_name} {ex['item'].image_id[:14]}  Dice {ex['dice']:.2f}") for ex in chosen], path,
                 "best (top) and worst (bottom) by Dice — red: model, green: expert, yellow: answer boxes", per_side)


def save_composite_gallery(examples: list[dict], path: str) -> None:
    """Composite questions with the model's mask (red) and the named tile's truth (green)."""
    _save_panels([(draw_overlay(ex["image"], ex["mask"], truth=ex["truth"]),
                   ("✔ " if ex["correct"] else "✘ ") + ex["question"][:48]) for ex in examples], path,
                 "composites: does the mask follow the question? red: model, green: the named lesion")
