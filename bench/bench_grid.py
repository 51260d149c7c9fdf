"""Which image grid should the compact reasoner read? How much of where the lesion is survives pooling.

    python bench/bench_grid.py --cache ~/.cache/coreseg/features [--grids 4,8,16] [--limit 600]

The compact reasoner sees the frozen encoder's 64 × 64 embedding pooled to grid × grid tokens. For each
grid this fits a ridge regression (closed form, on the training images of the feature cache, 4/5 train,
1/5 held out) from the pooled tokens to the lesion's centroid and log-area (measured on the cached
thumbnail mask). A grid is worth its sequence length when it predicts these better on the held-out
fifth. Prints R² per grid and the tokens each grid costs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pooled(embedding: np.ndarray, grid: int) -> np.ndarray:
    x = torch.from_numpy(embedding.astype(np.float32))[None]
    return F.adaptive_avg_pool2d(x, grid)[0].flatten().numpy()


def ridge_r2(x: np.ndarray, y: np.ndarray, alpha: float = 10.0) -> float:
    """Held-out R² (last fifth) of a ridge regression, solved in its dual form (features ≫ samples)."""
    n = len(x)
    cut = n - n // 5
    mean, std = x[:cut].mean(0), x[:cut].std(0) + 1e-6
    xs = (x - mean) / std
    ym = y[:cut].mean(0)
    gram = xs[:cut] @ xs[:cut].T
    coef = xs[:cut].T @ np.linalg.solve(gram + alpha * len(xs[0]) ** 0.5 * np.eye(cut), y[:cut] - ym)
    pred = xs[cut:] @ coef + ym
    return float(1 - ((pred - y[cut:]) ** 2).sum() / ((y[cut:] - y[cut:].mean(0)) ** 2).sum())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--grids", default="4,8,16")
    parser.add_argument("--limit", type=int, default=600, help="images per set")
    args = parser.parse_args(argv)
    grids = [int(g) for g in args.grids.split(",")]
    files = []
    for set_name in ("busbra", "kvasir", "ph2"):
        files += sorted((Path(args.cache) / set_name).glob("*.npz"))[:args.limit]
    rng = np.random.default_rng(0)
    files = [files[i] for i in rng.permutation(len(files))]
    feats = {g: [] for g in grids}
    targets = []
    for path in files:
        with np.load(path) as f:
            emb, mask = f["embedding"], f["thumb_mask"].astype(bool)
        ys, xs = np.nonzero(mask)
        targets.append([xs.mean() / mask.shape[1], ys.mean() / mask.shape[0], np.log(mask.mean() + 1e-4)])
        for g in grids:
            feats[g].append(pooled(emb, g))
    targets = np.array(targets)
    print(f"{len(files)} single training images (held out: the last fifth)\n")
    print("| grid | image tokens | R² centroid x | R² centroid y | R² log area |")
    print("|---|---|---|---|---|")
    for g in grids:
        x = np.stack(feats[g])
        r2 = [ridge_r2(x, targets[:, k:k + 1]) for k in range(3)]
        print(f"| {g} × {g} | {g * g} | {r2[0]:.3f} | {r2[1]:.3f} | {r2[2]:.3f} |")


if __name__ == "__main__":
    main()
