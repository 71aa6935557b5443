"""Console scripts. Thin: parse, call, print. Each entry point returns a process exit code."""
from __future__ import annotations

import argparse
import sys


def data_main(argv: list[str] | None = None) -> int:
    """`objmae-data {synth,stats,cam,show}` -- see objmae_ray/data/cli.py."""
    from objmae_ray.data.cli import main

    return main(argv)


def _sweep_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="objmae-sweep",
        description="Run an ObjMAE sweep file on Ray Tune + Optuna (`objmae-sweep validate FILE` only checks it).")
    parser.add_argument("file", help="search-space YAML (see search_spaces/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field: a sweep field (num_samples=8) or a base trial path "
                             "(pretrain.data.root=/data/coco); repeatable")
    parser.add_argument("--address", default=None,
                        help="Ray cluster: 'auto' or HOST:PORT (default: start a local Ray with the dashboard)")
    parser.add_argument("--name", default=None, help="run name (default: <study>-<date>-<time>)")
    parser.add_argument("--storage", default=None, help="storage path: local dir, NFS or s3://bucket/prefix")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run (--name, default the newest of this study)")
    return parser


def _print_problems(err: Exception) -> int:
    for line in getattr(err, "problems", None) or str(err).splitlines() or [type(err).__name__]:
        print(f"error: {line}", file=sys.stderr)
    return 2


def sweep_main(argv: list[str] | None = None) -> int:
    """`objmae-sweep FILE [--address ...] [--set k=v ...] [--resume] [--name N] [--storage P]` or
    `objmae-sweep validate FILE [--set k=v ...]` -- see objmae_ray/sweep.py and objmae_ray/spec.py."""
    from objmae_ray.errors import ConfigError
    from objmae_ray.spec import load_spec, plan

    argv = list(sys.argv[1:] if argv is None else argv)
    validate_only = bool(argv) and argv[0] == "validate"
    args = _sweep_parser().parse_args(argv[1:] if validate_only else argv)
    if args.storage:
        args.overrides.append(f"storage={args.storage}")
    try:
        spec = load_spec(args.file, args.overrides)
        if validate_only:
            print("\n".join(plan(spec).lines(spec)))
            print(f"{args.file}: OK")
            return 0
        from objmae_ray.sweep import run_sweep, unfinished_trials

        path, results = run_sweep(spec, address=args.address, name=args.name, resume=args.resume)
    except ConfigError as err:
        return _print_problems(err)
    except KeyboardInterrupt:
        print("interrupted: continue with --resume (finished trials are kept)", file=sys.stderr)
        return 130
    unfinished = unfinished_trials(spec, path, results)
    if results.num_errors or unfinished:
        print(f"{unfinished} trial(s) unfinished, {results.num_errors} failed; continue with: objmae-sweep "
              f"{args.file} --resume --name {path.rstrip('/').rsplit('/', 1)[-1]}", file=sys.stderr)
        return 1
    return 0


def export_main(argv: list[str] | None = None) -> int:
    """`objmae-export RUN_DIR --out DIR [--metric M] [--mode max|min]` -- see objmae_ray/export.py."""
    from objmae_ray.errors import ConfigError

    parser = argparse.ArgumentParser(prog="objmae-export",
                                     description="Export the best trial of a sweep run (weights for timm, config, card).")
    parser.add_argument("run_dir", help="the sweep's run directory (<storage>/<name>)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--metric", default=None, help="rank by this metric (default: the first objective)")
    parser.add_argument("--mode", default=None, choices=["max", "min"], help="direction (default: the objective's)")
    args = parser.parse_args(argv)
    try:
        from objmae_ray.export import export_best

        out = export_best(args.run_dir, args.out, metric=args.metric, mode=args.mode)
    except ConfigError as err:
        return _print_problems(err)
    print(f"exported to {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(sweep_main())
