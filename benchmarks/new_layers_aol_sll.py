"""AOL, SLL and CPL layers against their peers: a shortcut to the two main benchmarks.

Runs ``conv_layers.py`` and ``dense_layers.py`` restricted to the AOL, SLL and CPL layers and
their orthogonium peers (``AOLConv2D``, ``SDPBasedLipschitzResBlock``, ``SDPBasedLipschitzDense``),
same protocol and columns (train step, eval forward, peak memory, σ range, bound).

Run:  python benchmarks/new_layers_aol_sll.py [--warmup 3] [--rounds 3]
"""
from __future__ import annotations

import argparse
import sys

import conv_layers
import dense_layers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    common = ["--warmup", str(args.warmup), "--rounds", str(args.rounds), "--threads", "1"]
    sys.argv = ["conv_layers.py", *common, "--only", "AOL", "SLL", "CPL", "SDPBased"]
    conv_layers.main()
    dense_layers.main(["--sizes", "1024", *common, "--only", "AOL", "SLL", "CPL", "SDPBased"])


if __name__ == "__main__":
    main()
