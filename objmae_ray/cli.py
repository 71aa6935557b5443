"""Console scripts. Thin: parse, call, print. Each entry point returns a process exit code."""
from __future__ import annotations

import sys


def data_main(argv: list[str] | None = None) -> int:
    """`objmae-data {synth,stats,cam,show}` -- see objmae_ray/data/cli.py."""
    from objmae_ray.data.cli import main

    return main(argv)


def sweep_main(argv: list[str] | None = None) -> int:
    """`objmae-sweep FILE [...]` -- see objmae_ray/sweep.py."""
    raise SystemExit("objmae-sweep: not implemented yet")


def export_main(argv: list[str] | None = None) -> int:
    """`objmae-export RUN_DIR --out DIR` -- see objmae_ray/export.py."""
    raise SystemExit("objmae-export: not implemented yet")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(sweep_main())
