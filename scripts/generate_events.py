"""Write a deterministic, realistic NDJSON event log, gzipped if asked, for demos and benchmarks."""

from __future__ import annotations

import argparse
import gzip
import os
import sys
from itertools import islice
from pathlib import Path
from typing import BinaryIO

try:
    from projections.generator import Noise, generate
except ImportError:  # run from a clone where the package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from projections.generator import Noise, generate

_CHUNK = 10_000  # lines joined into one write


def _parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", help="output file, '-' for stdout; a .gz suffix writes gzip")
    parser.add_argument("--events", type=int, default=1_000_000, help="lines to write")
    parser.add_argument("--seed", type=int, default=42, help="random seed: same seed, same bytes")
    parser.add_argument("--aggregates", type=int, help="aggregates to create (default events/5)")
    parser.add_argument("--noise", choices=("none", "default"), default="none", help="fault rates")
    parser.add_argument("--gzip", action="store_true", help="gzip the output")
    return parser


def _write(args: argparse.Namespace, raw: BinaryIO) -> int:
    """Write the generated lines to `raw`, gzipped when asked, and return how many."""
    noise = Noise.default() if args.noise == "default" else Noise.none()
    lines = generate(args.events, seed=args.seed, aggregates=args.aggregates, noise=noise)
    # mtime=0 and no file name in the header keep gzipped output byte-identical across runs.
    compress = args.gzip or args.out.endswith(".gz")
    sink = gzip.GzipFile("", "wb", 6, raw, mtime=0) if compress else raw
    count = 0
    while chunk := list(islice(lines, _CHUNK)):
        sink.write(b"".join(chunk))
        count += len(chunk)
    if sink is not raw:
        sink.close()
    raw.flush()
    return count


def main(argv: list[str] | None = None) -> int:
    """Generate the log, say how many events went where on stderr, and return the exit code."""
    args = _parser().parse_args(argv)
    if args.events < 0 or (args.aggregates is not None and args.aggregates < 1):
        print("error: --events must be >= 0 and --aggregates >= 1", file=sys.stderr)
        return 2
    try:
        if args.out == "-":
            count = _write(args, sys.stdout.buffer)
        else:
            with open(args.out, "wb") as raw:
                count = _write(args, raw)
    except BrokenPipeError:  # the reader stopped early (| head): not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {count} events to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
