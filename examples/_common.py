"""Small shared helpers for the example scripts (not part of the library API).

Every example is a script ``python examples/NAME.py --out DIR [--quick] [--seed N]`` and
also exposes ``main(argv) -> dict`` so tests can run it in-process.  The helpers here
cover the boilerplate they share: argument parsing, seeding, a tqdm progress bar, saving
figures with the non-interactive Agg backend, a markdown result table and ``results.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # never open a window; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

try:  # tqdm is an "examples" extra; fall back to a silent iterator
    from tqdm.auto import tqdm as _tqdm
except Exception:  # pragma: no cover
    _tqdm = None

# make ``import liplayers`` work when running ``python examples/NAME.py`` from a checkout
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

__all__ = ["make_parser", "setup", "progress", "save_figure", "format_table", "print_table",
           "write_results", "Timer", "plt"]


def make_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    """Parser with the options every example shares: ``--out``, ``--quick``, ``--seed``, ``--threads``."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=default_out, help="output directory for PNGs and results.json")
    p.add_argument("--quick", action="store_true", help="tiny budget (seconds), for smoke tests")
    p.add_argument("--seed", type=int, default=0, help="random seed (torch, numpy, random)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (small models: 1 is fastest, and robust to a busy CPU)")
    p.add_argument("--no-progress", action="store_true", help="disable the tqdm progress bars")
    return p


_PROGRESS = {"enabled": True}


def setup(args: argparse.Namespace) -> str:
    """Create ``args.out``, seed every generator, set threads; returns the output directory."""
    os.makedirs(args.out, exist_ok=True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if getattr(args, "threads", None):
        torch.set_num_threads(int(args.threads))
    _PROGRESS["enabled"] = not getattr(args, "no_progress", False)
    return args.out


def progress(iterable: Iterable, **kwargs) -> Iterable:
    """tqdm progress bar on stderr (plain iterator when tqdm is missing or disabled)."""
    if _tqdm is None or not _PROGRESS["enabled"]:
        return iterable
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return _tqdm(iterable, **kwargs)


def save_figure(fig, out: str, name: str, dpi: int = 110) -> str:
    """Save ``fig`` as ``out/name`` (PNG), close it, return the path."""
    path = os.path.join(out, name)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def _fmt(v: Any, digits: int) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "—"
        if v != 0 and (abs(v) >= 1e4 or abs(v) < 10 ** (-digits)):
            return f"{v:.{digits}g}" if abs(v) >= 1e4 else f"{v:.2e}"
        return f"{v:.{digits}f}"
    return str(v)


def format_table(rows: Sequence[Dict[str, Any]], columns: Optional[List[str]] = None,
                 digits: int = 4, title: Optional[str] = None) -> str:
    """Markdown table of ``rows`` (dicts) with the given column order."""
    if not rows:
        return f"{title}\n(no rows)" if title else "(no rows)"
    columns = columns or list(rows[0].keys())
    cells = [[_fmt(r.get(c, ""), digits) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[k]) for row in cells)) for k, c in enumerate(columns)]
    lines = []
    if title:
        lines.append(f"### {title}")
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        lines.append("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |")
    return "\n".join(lines)


def print_table(rows, columns=None, digits: int = 4, title: Optional[str] = None) -> str:
    """Print (to stdout) and return :func:`format_table`."""
    s = format_table(rows, columns, digits, title)
    print(s, flush=True)
    print(flush=True)
    return s


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, torch.Tensor):
        return _jsonable(o.detach().cpu().tolist())
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, (np.floating, float)):
        v = float(o)
        return v if math.isfinite(v) else None  # JSON has no nan/inf
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.bool_,)):
        return bool(o)
    return o


def write_results(out: str, results: Dict[str, Any], name: str = "results.json") -> str:
    """Write ``results`` as JSON (numpy/torch values converted; nan/inf become null)."""
    path = os.path.join(out, name)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(_jsonable(results), fh, indent=2)
    os.replace(tmp, path)
    return path


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False
