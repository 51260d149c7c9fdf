"""A tiny labelled set shaped like BUS-BRA (images/, masks/, bus_data.csv, 5-fold-cv.csv) whose
lesions are dark ellipses on speckled tissue, so the real pipeline can run on it offline."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def ellipse_scan(height: int, width: int, centre, axes, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    inside = ((yy - centre[0]) / axes[0]) ** 2 + ((xx - centre[1]) / axes[1]) ** 2 <= 1
    grey = np.clip(np.where(inside, 45, 165) + rng.normal(0, 12, (height, width)), 0, 255).astype(np.uint8)
    return grey, inside


def make_busbra(root: Path, n: int = 8, size=(96, 128)) -> Path:
    """`n` images of distinct patients; the last quarter is fold 4 (validation), the rest folds 1–3."""
    folder = Path(root) / "busbra"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rows, folds = [], []
    rng = np.random.default_rng(0)
    n_val = max(1, n // 4)
    for i in range(n):
        image_id = f"bus_{i + 1:04d}-s"
        centre = (int(rng.integers(30, size[0] - 30)), int(rng.integers(35, size[1] - 35)))
        axes = (int(rng.integers(12, 22)), int(rng.integers(16, 30)))
        grey, mask = ellipse_scan(*size, centre, axes, seed=i)
        Image.fromarray(grey).save(folder / "images" / f"{image_id}.png")
        Image.fromarray(mask).convert("1").save(folder / "masks" / f"mask_{i + 1:04d}-s.png")
        pathology = "malignant" if i % 2 else "benign"
        rows.append(f'{image_id},{i + 1},fibroadenoma,{pathology},{3 + i % 3},GE Logiq 7,{size[1]},{size[0]},left,'
                    f'"[0,0,1,1]"')
        fold = 4 if i >= n - n_val else 1 + i % 3
        folds.append(f"{image_id},{pathology},{fold},1,1,1,1,1")
    (folder / "bus_data.csv").write_text("ID,Case,Histology,Pathology,BIRADS,Device,Width,Height,Side,BBOX\n"
                                         + "\n".join(rows) + "\n")
    (folder / "5-fold-cv.csv").write_text("ID,Pathology,kFold,valid_1,valid_2,valid_3,valid_4,valid_5\n"
                                          + "\n".join(folds) + "\n")
    return Path(root)
