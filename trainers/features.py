"""Encode a labelled set once with the frozen image encoder and keep what training needs.

The encoder is frozen in every stage, so SFT, GRPO and evaluation read these files instead of
re-encoding (≈ 1 s per image on a CPU). One `.npz` per image:
  embedding (256×64×64 fp16), target (256×256 mask in the decoder frame), size (H, W),
  thumb / thumb_mask (aspect-preserving copy, longest side 384, for measuring the lesion).

    python -m trainers.features --data ../shared/data --out ~/.cache/coreseg/features [--sets busbra,kvasir,ph2]
        [--splits val,train] [--limit N] [--encoder-backend auto]

Resumable: images already in `--out` are skipped, and each file is written atomically, so a killed run
loses at most the image it was encoding. Keep `--out` outside the work tree so later sessions reuse it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from coreseg.allocator import keep_freed_memory
from coreseg.config import SegmenterConfig
from coreseg.lesion_facts import thumbnail
from coreseg.datasets import LabelledImage, interleave, load_split, read_image, read_mask
from coreseg.modeling.segmenter import Segmenter, mask_to_low_res



def feature_path(root: Path, item: LabelledImage) -> Path:
    return Path(root) / item.set_name / f"{item.image_id}.npz"


def encode_item(segmenter: Segmenter, item: LabelledImage, out: Path) -> None:
    image, mask = read_image(item), read_mask(item)
    embedding = segmenter.encode(image)[0].to(torch.float16).cpu().numpy()
    thumb, thumb_mask = thumbnail(image, mask)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, embedding=embedding, target=mask_to_low_res(mask)[0, 0].numpy().astype(np.uint8),
             size=np.array(image.shape[:2]), thumb=thumb, thumb_mask=thumb_mask,
             labels=np.array(json.dumps(item.labels)))
    tmp.rename(out)


def load_features(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    data["labels"] = json.loads(str(data["labels"]))
    return data


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sets", default="busbra,kvasir,ph2")
    parser.add_argument("--splits", default="val,train")
    parser.add_argument("--limit", type=int, default=None, help="at most N images per set and split")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--encoder-backend", default="auto", help="auto | eager | onnxruntime | openvino")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    segmenter = Segmenter(SegmenterConfig()).eval()
    print(f"encoder backend: {segmenter.use_encoder_backend(args.encoder_backend, args.threads)}")
    for split in args.splits.split(","):
        items = interleave([load_split(args.data, s, split)[:args.limit] for s in args.sets.split(",")])
        todo = [i for i in items if not feature_path(Path(args.out), i).exists()]
        for item in tqdm(todo, desc=f"encode {split}"):
            encode_item(segmenter, item, feature_path(Path(args.out), item))


if __name__ == "__main__":
    main()
