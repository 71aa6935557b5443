"""Console scripts. Thin: parse, call, print. Each entry point returns a process exit code.

  objmae-sweep FILE | validate FILE    objmae_ray/sweep (then the results table and report: objmae_ray/results)
  objmae-export RUN_DIR --out DIR      objmae_ray/results/export.py
  objmae-report RUN_DIR                objmae_ray/results/page.py
  objmae-data ...                      objmae_ray/data/cli.py
Imports of Ray, torch and the results layer happen inside the commands that need them, so
`objmae-sweep validate` and `--help` start without loading Ray (each such import says so).
"""
from __future__ import annotations

import argparse
import sys

from objmae_ray.errors import ConfigError
from objmae_ray.sweep.cluster import capacity_problems, config_node_types, load_cluster_config, trial_fits
from objmae_ray.sweep.plan import plan
from objmae_ray.sweep.space import base_trial
from objmae_ray.sweep.spec import load_spec


def data_main(argv: list[str] | None = None) -> int:
    """`objmae-data {synth,stats,cam,show}` -- see objmae_ray/data/cli.py."""
    from objmae_ray.data.cli import main  # torch + timm: only for this command

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
    parser.add_argument("--cluster", default=None, metavar="CLUSTER_YAML",
                        help="also check offline that the trials fit this `ray up` config's node types")
    return parser


def _check_cluster_file(sweep_file: str, spec, cluster_file: str) -> str:
    """The trials' workers against a cluster YAML's node types x max_workers, offline; ConfigError naming
    the sweep field and the largest node type. Returns the line `objmae-sweep validate` prints."""
    config = load_cluster_config(cluster_file)
    types = config_node_types(config)
    if not types:
        return f"{cluster_file}: node resources are read off the machines (local provider): capacity not checked"
    resources = base_trial(spec).resources
    problems = capacity_problems(resources, types, field=f"{sweep_file}: base.resources")
    if problems:
        raise ConfigError(f"{problems[0]} (node types of {cluster_file})")
    return f"{cluster_file}: a trial's workers fit {', '.join(trial_fits(resources, config))}"


def _print_problems(err: Exception) -> int:
    for line in getattr(err, "problems", None) or str(err).splitlines() or [type(err).__name__]:
        print(f"error: {line}", file=sys.stderr)
    return 2


def _finish_sweep(path: str, spec, results) -> None:
    """The results table in the run directory, then the paper-form report (local storage)."""
    from objmae_ray.results.page import write_report, write_results  # torch + matplotlib: after the sweep
    from objmae_ray.results.records import records_from_results

    print(write_results(path, spec, records_from_results(results)))
    if "://" not in path:
        try:
            print(f"report: {write_report(path) / 'index.html'}")
        except Exception as err:  # noqa: BLE001 -- a figure failing must not fail a finished sweep
            print(f"report skipped: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")


def sweep_main(argv: list[str] | None = None) -> int:
    """`objmae-sweep FILE [--address ...] [--set k=v ...] [--resume] [--name N] [--storage P]` or
    `objmae-sweep validate FILE [--set k=v ...] [--cluster cluster/gpu.yaml]` -- see objmae_ray/sweep/."""
    argv = list(sys.argv[1:] if argv is None else argv)
    validate_only = bool(argv) and argv[0] == "validate"
    args = _sweep_parser().parse_args(argv[1:] if validate_only else argv)
    if args.storage:
        args.overrides.append(f"storage={args.storage}")
    try:
        spec = load_spec(args.file, args.overrides)
        cluster_line = _check_cluster_file(args.file, spec, args.cluster) if args.cluster else None
        if validate_only:
            print("\n".join(plan(spec).lines(spec) + ([cluster_line] if cluster_line else [])))
            print(f"{args.file}: OK")
            return 0
        from objmae_ray.sweep.tuner import run_sweep, unfinished_trials  # Ray: only when a sweep runs

        path, results = run_sweep(spec, address=args.address, name=args.name, resume=args.resume)
        _finish_sweep(path, spec, results)
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


def _run_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser whose first argument is a sweep's run directory."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("run_dir", help="the sweep's run directory (<storage>/<name>)")
    return parser


def export_main(argv: list[str] | None = None) -> int:
    """`objmae-export RUN_DIR --out DIR [--metric M] [--mode max|min]` -- see objmae_ray/results/export.py."""
    parser = _run_parser("objmae-export", "Export the best trial of a sweep run (weights for timm, config, card).")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--metric", default=None, help="rank by this metric (default: the first objective)")
    parser.add_argument("--mode", default=None, choices=["max", "min"], help="direction (default: the objective's)")
    args = parser.parse_args(argv)
    try:
        from objmae_ray.results.export import export_best  # torch + timm: only for this command

        out = export_best(args.run_dir, args.out, metric=args.metric, mode=args.mode)
    except ConfigError as err:
        return _print_problems(err)
    print(f"exported to {out}")
    return 0


def report_main(argv: list[str] | None = None) -> int:
    """`objmae-report RUN_DIR [--out DIR] [--images N] [--no-figures]` -- see objmae_ray/results/page.py."""
    parser = _run_parser("objmae-report", "The paper's tables and figures for a finished objmae-sweep run.")
    parser.add_argument("--out", default=None, help="output directory (default RUN_DIR/report)")
    parser.add_argument("--images", type=int, default=4, help="validation images in the figures (default 4)")
    parser.add_argument("--no-figures", action="store_true", help="tables and page only")
    args = parser.parse_args(argv)
    try:
        from objmae_ray.results.page import write_report  # torch + matplotlib: only for this command

        out = write_report(args.run_dir, args.out, num_images=args.images, with_figures=not args.no_figures)
    except ConfigError as err:
        return _print_problems(err)
    print(f"report written to {out} (open {out / 'index.html'})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(sweep_main())
