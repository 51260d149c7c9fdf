"""Weight interpolation of two checkpoints of one architecture (WiSE-FT): `alpha` of the first plus
`1 − alpha` of the second, for every trained tensor. Meant for a run and its continuation (an SFT start
and the GRPO run from it), whose trade-offs differ: the mixture often lies between them.

    python -m trainers.soup A B --alpha 0.5 --out DIR [--version NAME]
"""
from __future__ import annotations

import argparse

from coreseg.checkpoint import load_checkpoint, save_checkpoint


def interpolate(first, second, alpha: float):
    """`first` with each trained tensor replaced by alpha · first + (1 − alpha) · second."""
    if first.config != second.config:
        raise ValueError("the two checkpoints are of different architectures")
    a, b = first.trainable_state_dict(), second.trainable_state_dict()
    first.load_state_dict({k: alpha * a[k].float() + (1 - alpha) * b[k].float() for k in a}, strict=False)
    return first


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the first checkpoint")
    parser.add_argument("--out", required=True)
    parser.add_argument("--version", default=None)
    args = parser.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        parser.error("--alpha is a weight in [0, 1]")
    first, info_a = load_checkpoint(args.first, device="cpu")
    second, info_b = load_checkpoint(args.second, device="cpu")
    model = interpolate(first, second, args.alpha)
    version = args.version or f"soup-{info_a.model_version}-{info_b.model_version}-{args.alpha:g}"
    print(f"wrote {save_checkpoint(model, args.out, version, parent=info_b.model_version)} ({version})")


if __name__ == "__main__":
    main()
