"""``cxrdet synth``: write a synthetic VinBigData-like dataset (DICOMs + label CSVs)."""

from __future__ import annotations

import argparse

from cxrdet.errors import UserError
from cxrdet.flags import DEFAULT_SEED
from cxrdet.synth.dataset import DatasetExists, SynthConfig, SynthConfigError, generate_dataset

_D = SynthConfig()


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Write synthetic chest X-ray DICOMs that look like VinBigData exports, with a "
        "3-reader train.csv and a consensus test.csv. The same --seed gives byte-identical files.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (train/, test/, train.csv, test.csv)")
    p.add_argument("--n-train", type=int, default=_D.n_train, metavar="N",
                   help="number of train images (default: %(default)s)")
    p.add_argument("--n-test", type=int, default=_D.n_test, metavar="N",
                   help="number of held-out test images (default: %(default)s)")
    p.add_argument("--scale", type=float, default=_D.scale, metavar="S",
                   help="image size as a fraction of real VinBigData sizes (1 = about 2800x2400; "
                   "default: %(default)s, a long side of mostly 600-850 px)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="S",
                   help="random seed; same seed, same bytes (default: %(default)s)")
    p.add_argument("--normal-fraction", type=float, default=_D.normal_fraction, metavar="F",
                   help="fraction of images with no finding (default: %(default)s)")
    p.add_argument("--workers", type=int, default=_D.workers, metavar="N",
                   help="processes rendering and writing images; the output does not depend on "
                   "it (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(args: argparse.Namespace) -> int:
    cfg = SynthConfig(
        n_train=args.n_train,
        n_test=args.n_test,
        scale=args.scale,
        seed=args.seed,
        normal_fraction=args.normal_fraction,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    try:
        s = generate_dataset(args.out, cfg)
    except SynthConfigError as e:
        raise UserError(f"--{e.field.replace('_', '-')}: {e}") from None
    except DatasetExists as e:
        raise UserError(f"--out {e}; pass --overwrite to replace it") from None
    print(f"wrote {s.n_train} train images ({s.n_train_normal} normal) and {s.n_test} test images "
          f"({s.n_test_normal} normal) to {s.out_dir}")
    print(f"labels: {s.train_csv} (3 readers per image), {s.test_csv} (consensus)")
    found = ", ".join(f"{name} {n}" for name, n in s.findings_per_class.items() if n)
    print(f"findings drawn: {found or 'none'}")
    return 0
