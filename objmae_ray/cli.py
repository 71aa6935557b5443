"""Console scripts. Thin: parse, call, print. Each entry point returns a process exit code.

  objmae-sweep FILE... | validate FILE...
                                       objmae_ray/sweep (then the results table and report: objmae_ray/results);
                                       several files run one after the other in one Ray session, sharing
                                       pre-trainings; validate adds the GPU-hours with and without reuse
  objmae-sweep status [RUN | STORAGE]  objmae_ray/results/status.py (no Ray)
  objmae-sweep dashboard RUN           optuna-dashboard on the run's stored study (objmae_ray/sweep/study.py)
  objmae-sweep doctor [--trial F]      this node's preflight (objmae_ray/sweep/doctor.py)
  objmae-export RUN_DIR --out DIR      objmae_ray/results/export.py
  objmae-report RUN_DIR                objmae_ray/results/page.py
  objmae-data ...                      objmae_ray/data/cli.py
Imports of Ray, torch and the results layer happen inside the commands that need them, so
`objmae-sweep validate` and `--help` start without loading Ray (each such import says so).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from objmae_ray.errors import ConfigError
from objmae_ray.sweep.cluster import capacity_problems, config_node_types, load_cluster_config, trial_fits
from objmae_ray.sweep.gpus import default_gpu_type
from objmae_ray.sweep.plan import Target, plan
from objmae_ray.sweep.pretrained import reuse_lines, source_line
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
    parser.add_argument("files", nargs="+", metavar="file",
                        help="search-space YAML (see search_spaces/); several run one after the other in one Ray "
                             "session, each in its own run directory, sharing their pre-trainings")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field: a sweep field (num_samples=8) or a base trial path "
                             "(pretrain.data.root=/data/coco); repeatable")
    parser.add_argument("--address", default=None,
                        help="Ray cluster: 'auto' or HOST:PORT (default: start a local Ray with the dashboard)")
    parser.add_argument("--name", default=None, help="run name (default: <study>-<date>-<time>; with several "
                                                      "files: NAME-<study>)")
    parser.add_argument("--storage", default=None, help="storage path: local dir, NFS or s3://bucket/prefix")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run (--name, default the newest of this study)")
    parser.add_argument("--cluster", default=None, metavar="CLUSTER_YAML",
                        help="also check offline that the trials fit this `ray up` config's node types")
    parser.add_argument("--optuna-storage", default=None, metavar="URL",
                        help="Optuna study database (postgresql://..., mysql://...; default: SQLite optuna.db "
                             "in the run directory)")
    parser.add_argument("--mlflow", default=None, metavar="URI",
                        help="log to MLflow at this tracking URI (extra [mlflow]): a parent run per sweep, "
                             "a child run per trial")
    parser.add_argument("--verbose", action="store_true",
                        help="also print Ray's worker output (always in the run's logs/workers.log)")
    return parser


def _check_cluster_file(sweep_file: str, spec, cluster_file: str) -> tuple[str, Target | None]:
    """The trials' workers against a cluster YAML's node types x max_workers, offline; ConfigError naming
    the sweep field and the largest node type. Returns the line `objmae-sweep validate` prints and where the
    plan places a trial (the first fitting node type with a known GPU, sweep/gpus.py), if any."""
    config = load_cluster_config(cluster_file)
    types = config_node_types(config)
    if not types:
        return f"{cluster_file}: node resources are read off the machines (local provider): capacity not checked", None
    resources = base_trial(spec).resources
    problems = capacity_problems(resources, types, field=f"{sweep_file}: base.resources")
    if problems:
        raise ConfigError(f"{problems[0]} (node types of {cluster_file})")
    fits = trial_fits(resources, config)
    found = default_gpu_type(config, fits) if resources.use_gpu else None
    return f"{cluster_file}: a trial's workers fit {', '.join(fits)}", Target(*found) if found else None


def _print_problems(err: Exception) -> int:
    for line in getattr(err, "problems", None) or str(err).splitlines() or [type(err).__name__]:
        print(f"error: {line}", file=sys.stderr)
    return 2


def _finish_sweep(path: str, spec, results) -> None:
    """The results table and the paper-form report in the run directory (local or remote); with MLflow,
    the best trial's export as artifacts."""
    from objmae_ray.results.page import write_report, write_results  # torch + matplotlib: after the sweep
    from objmae_ray.results.records import records_from_results

    print(write_results(path, spec, records_from_results(results)))
    try:
        print(f"report: {write_report(path)}/index.html")
    except Exception as err:  # noqa: BLE001 -- a figure failing must not fail a finished sweep
        print(f"report skipped: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    if spec.tracking.mlflow:
        _log_best_to_mlflow(path)


def _log_best_to_mlflow(path: str) -> None:
    """Export the best trial into a temporary directory and log it to the sweep's MLflow runs."""
    from objmae_ray.results.export import export_best  # torch + timm: after the sweep
    from objmae_ray.sweep.tracking import log_best  # Ray + mlflow: only with tracking

    try:
        with tempfile.TemporaryDirectory(prefix="objmae-mlflow-") as out:
            export_best(path, out)
            trial_id = json.loads((Path(out) / "metrics.json").read_text())["trial_id"]
            print(f"MLflow: best trial {trial_id}'s encoder logged to run {log_best(path, out, trial_id)}")
    except ConfigError as err:
        print(f"MLflow: best trial not logged: {err}")


def sweep_main(argv: list[str] | None = None) -> int:
    """`objmae-sweep FILE [--address ...] [--set k=v ...] [--resume] [--name N] [--storage P]` or
    `objmae-sweep validate FILE [--set k=v ...] [--cluster cluster/gpu.yaml]` -- see objmae_ray/sweep/."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _SWEEP_COMMANDS:
        return _SWEEP_COMMANDS[argv[0]](argv[1:])
    validate_only = bool(argv) and argv[0] == "validate"
    args = _sweep_parser().parse_args(argv[1:] if validate_only else argv)
    if args.storage:
        args.overrides.append(f"storage={args.storage}")
    args.overrides += _tracking_overrides(args)
    try:
        specs = [(file, load_spec(file, args.overrides)) for file in args.files]
        if validate_only:
            targets = {}
            for file, spec in specs:
                cluster_line, target = _check_cluster_file(file, spec, args.cluster) if args.cluster else (None, None)
                targets[file] = target
                source = source_line(spec)
                print("\n".join(plan(spec, target).lines(spec) + ([source] if source else [])
                                + ([cluster_line] if cluster_line else [])))
            print("\n".join(reuse_lines(specs, targets) + [f"{file}: OK" for file, _ in specs]))
            return 0
        for file, spec in specs:
            if args.cluster:
                _check_cluster_file(file, spec, args.cluster)
        from objmae_ray.sweep.tuner import run_sweep, unfinished_trials  # Ray: only when a sweep runs

        code = 0
        for i, (file, spec) in enumerate(specs, start=1):
            if len(specs) > 1:
                print(f"study {i}/{len(specs)}: {file}")
            name = f"{args.name}-{spec.study}" if args.name and len(specs) > 1 else args.name
            path, results = run_sweep(spec, address=args.address, name=name, resume=args.resume,
                                      verbose=args.verbose)
            _finish_sweep(path, spec, results)
            unfinished = unfinished_trials(spec, path, results)
            if results.num_errors or unfinished:
                print(f"{unfinished} trial(s) unfinished, {results.num_errors} failed; continue with: objmae-sweep "
                      f"{file} --resume --name {path.rstrip('/').rsplit('/', 1)[-1]}", file=sys.stderr)
                code = 1
    except ConfigError as err:
        return _print_problems(err)
    except KeyboardInterrupt:
        print("interrupted: continue with --resume (finished trials are kept)", file=sys.stderr)
        return 130
    return code


def _tracking_overrides(args: argparse.Namespace) -> list[str]:
    """--optuna-storage and --mlflow as --set overrides of the spec."""
    out = []
    if args.optuna_storage:
        out.append(f"optuna_storage={args.optuna_storage}")
    if args.mlflow:
        out.append(f"tracking.mlflow.uri={args.mlflow}")
    return out


def _status_main(argv: list[str]) -> int:
    """`objmae-sweep status [RUN | STORAGE]`: each run's study, state, trials, best so far, report (no Ray)."""
    parser = argparse.ArgumentParser(prog="objmae-sweep status", description=_status_main.__doc__)
    parser.add_argument("target", nargs="?", default="runs",
                        help="a run directory or a storage path holding runs (local or s3://; default ./runs)")
    args = parser.parse_args(argv)
    from objmae_ray.results.status import status_lines  # records + tables: only for this command

    try:
        print("\n".join(status_lines(args.target)))
    except ConfigError as err:
        return _print_problems(err)
    return 0


def _dashboard_main(argv: list[str]) -> int:
    """`objmae-sweep dashboard RUN [--port P]`: optuna-dashboard on the run's stored study, on loopback."""
    parser = argparse.ArgumentParser(prog="objmae-sweep dashboard", description=_dashboard_main.__doc__)
    parser.add_argument("run_dir", help="the sweep's run directory (<storage>/<name>, local or s3://)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    args = parser.parse_args(argv)
    from objmae_ray.sweep.rundir import is_remote, require_run, run_name  # pyarrow + optuna: only for this command
    from objmae_ray.sweep.study import open_storage, stored_study_url

    try:
        run = require_run(args.run_dir)
        url = stored_study_url(run)
        if url is None:
            raise ConfigError(f"{run}: no Optuna study database (the run was made before studies were stored); "
                              f"nothing was changed")
        try:
            import optuna_dashboard
        except ImportError:
            raise ConfigError("optuna-dashboard is not installed (pip install 'objmae-ray[dashboard]')") from None
        storage = open_storage(url)
        study_id = storage.get_study_id_from_name(run_name(run))
    except KeyError:
        return _print_problems(ConfigError(f"{args.run_dir}: its study database holds no study {run_name(run)!r}"))
    except ConfigError as err:
        return _print_problems(err)
    snapshot = " (a copy of the study as of now: restart to refresh)" if is_remote(run) and "sqlite" in url else ""
    print(f"optuna-dashboard: http://{args.host}:{args.port}/dashboard/studies/{study_id}{snapshot}", flush=True)
    try:
        optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    except OSError as err:
        return _print_problems(ConfigError(f"--port {args.port}: cannot serve ({err.strerror or err})"))
    except KeyboardInterrupt:
        pass
    return 0


def _doctor_main(argv: list[str]) -> int:
    """`objmae-sweep doctor [--trial FILE | --sweep FILE] [--storage PATH] [--expect-gpus N]`: this node's
    preflight (objmae_ray/sweep/doctor.py); exit 1 when a check fails, each failure one line with its fix."""
    parser = argparse.ArgumentParser(prog="objmae-sweep doctor", description=_doctor_main.__doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--trial", default=None, metavar="FILE", help="a TrialConfig YAML whose data to check")
    source.add_argument("--sweep", default=None, metavar="FILE", help="a sweep file (its base trial is checked)")
    parser.add_argument("--storage", default=None, help="storage path to check: local dir, NFS or s3://bucket/prefix")
    parser.add_argument("--expect-gpus", type=int, default=None, metavar="N",
                        help="GPUs this node declares (its node type's GPU resource); default: the GPU of "
                             "RAY_OVERRIDE_RESOURCES (set by `ray up` for worker_start_ray_commands), else not compared")
    parser.add_argument("--min-shm-gb", type=float, default=None, metavar="GB",
                        help="free /dev/shm required (default: what the trial's loader workers need)")
    args = parser.parse_args(argv)
    from objmae_ray.config import TrialConfig
    from objmae_ray.sweep.doctor import declared_gpus, node_checks, node_name  # torch: only for this command
    from objmae_ray.train.trial import load_trial_config

    try:
        cfg = load_trial_config(args.trial) if args.trial else \
            base_trial(load_spec(args.sweep)) if args.sweep else TrialConfig()
        expect = args.expect_gpus if args.expect_gpus is not None else declared_gpus()
        checks = node_checks(cfg, storage=args.storage, expect_gpus=expect,
                             min_shm_bytes=None if args.min_shm_gb is None else int(args.min_shm_gb * 2**30))
    except ConfigError as err:
        return _print_problems(err)
    node = node_name()
    print(f"objmae-sweep doctor on {node}")
    for check in checks:
        print(check.line(node), file=sys.stdout if check.ok else sys.stderr)
    return 0 if all(check.ok for check in checks) else 1


_SWEEP_COMMANDS = {"status": _status_main, "dashboard": _dashboard_main, "doctor": _doctor_main}


def _run_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser whose first argument is a sweep's run directory."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("run_dir", help="the sweep's run directory (<storage>/<name>: local, NFS or s3://)")
    return parser


def export_main(argv: list[str] | None = None) -> int:
    """`objmae-export RUN_DIR --out DIR [--metric M] [--mode max|min] [--phase I]` -- see results/export.py."""
    parser = _run_parser("objmae-export", "Export the best trial of a sweep run (weights for timm, config, card).")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--metric", default=None, help="rank by this metric (default: the first objective)")
    parser.add_argument("--mode", default=None, choices=["max", "min"], help="direction (default: the objective's)")
    parser.add_argument("--phase", default=None, type=int,
                        help="the transfer phase whose final metric ranks (default: the objective's, else the last)")
    args = parser.parse_args(argv)
    try:
        from objmae_ray.results.export import export_best  # torch + timm: only for this command

        out = export_best(args.run_dir, args.out, metric=args.metric, mode=args.mode, phase=args.phase)
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
    print(f"report written to {out} (open {out}/index.html)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(sweep_main())
