"""Command line: ``run`` (default), ``report``, ``data``, ``evaluate``, ``list``, ``export``, ``check-method``.

``python run_benchmark.py`` with no arguments runs the default preset into results/demo/.
Exit status: 0 success, 1 some grid cell failed (the others finished), 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from benchmark import __version__
from benchmark.core.config import Config, DataConfig, apply_overrides, bounded_fields, choice_fields, choices, to_json
from benchmark.core.errors import BenchmarkError, ConfigError, DiskFullError
from benchmark.core.names import GROUPS
from benchmark.core.presets import (
    DEFAULT_PRESET,
    PRESETS,
    PROTOCOLS,
    get_preset,
    preset_doc,
)

EPILOG = "Run `%(prog)s COMMAND --help` for the options of one command."


class _Later(str):
    """Help text made from a registry when the help is shown: importing the registries costs seconds
    (torch), and building the parser must not (every command, bad-input errors, ``--help``)."""

    def __new__(cls, make: Callable[[], str]) -> _Later:
        text = super().__new__(cls, "(filled in when shown)")
        text.make = make
        return text


class _Parser(argparse.ArgumentParser):
    def format_help(self) -> str:
        for action in self._actions:
            if isinstance(action.help, _Later):
                action.help = action.help.make().replace("%", "%%")
        return super().format_help()


def _dataset_help() -> str:
    from benchmark.data import DATASETS

    names = [n for n in DATASETS.names() if n not in ("imagefolder", "listfile")]
    return " | ".join([*names, "imagefolder:PATH", "listfile:LIST"]) + " (see `list`)"


def _methods_help() -> str:
    from methods import METHODS

    return f"comma-separated method names ({', '.join(METHODS.names())}); compose with '+', e.g. cbdm+resample"


def _launcher_help() -> str:
    from benchmark.harness.launch import LAUNCHERS

    described = "; ".join(f"{name}: {fn.__doc__}" for name, fn in LAUNCHERS.items())
    return f"where the cells run (default local). {described}"


def _slurm_help(field: str, text: str) -> _Later:
    def make() -> str:
        from benchmark.harness.launch import SlurmOptions

        default = getattr(SlurmOptions(), field)
        return text if default is None else f"{text} (default {default})"

    return _Later(make)


def _choices_help(cls: type, name: str) -> str:
    return " | ".join(choices(cls, name)) + f" (default {getattr(cls(), name)})"


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.01,0.1, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=DEFAULT_PRESET, help=f"preset name (default {DEFAULT_PRESET}); see `list`")
    p.add_argument("--protocol", default=None, help="evaluation protocol to apply on top of the preset: "
                   + ", ".join(PROTOCOLS.names()))  # fmt: skip
    p.add_argument("--dataset", default=None, help=_Later(_dataset_help))
    p.add_argument("--data-root", default=None, help="folder holding (or receiving) dataset files")
    p.add_argument("--inception-weights", default=None,
                   help="path to weights-inception-2015-12-05-6726825d.pth "
                        "(else $LTGEN_INCEPTION_WEIGHTS or the torch hub cache)")  # fmt: skip
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set train.steps=2000 (repeatable; --dry-run lists keys)")  # fmt: skip
    _add_plugin_option(p)


def _add_plugin_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="FILE",
                   help="a .py file that registers a method (repeatable; also $LTGEN_PLUGINS, os.pathsep-separated; "
                        "installed packages: the entry-point group ltgen_bench.methods)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ltgen-bench",
        description="LTGen-Bench: train, sample and evaluate generative models on long-tailed data. "
        "Without a command, runs the default preset (demo) into results/demo/.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"ltgen-bench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a grid: dataset x imbalance x method x seed")
    _add_config_options(run)
    run.add_argument("--methods", default=None, help=_Later(_methods_help))
    run.add_argument("--imbalance", type=_floats, default=None, help="comma-separated n_min/n_max values, e.g. 0.01,0.1")
    run.add_argument("--seeds", type=_ints, default=None, help="comma-separated seeds, e.g. 0,1,2")
    run.add_argument("--out", default=None, help="results folder (default results/<preset>)")
    run.add_argument("--force", action="store_true", help="redo cells that already finished")
    run.add_argument("--rescore", action="store_true",
                     help="re-evaluate finished cells from their stored samples with the current code (no retraining, "
                          "no resampling); their rows replace the old ones")
    run.add_argument("--dry-run", action="store_true", help="print the resolved config and grid, then exit")
    run.add_argument("--no-report", action="store_true", help="skip leaderboards and plots at the end")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    sc = run.add_argument_group("launchers (one run on several GPUs: torchrun --nproc_per_node N run_benchmark.py run ...)")
    sc.add_argument("--launcher", default="local", metavar="NAME", help=_Later(_launcher_help))
    sc.add_argument("--jobs", type=int, default=1, help="local launcher: cells at once, one GPU each when GPUs are present")
    # the Slurm options default to SlurmOptions' own defaults (None: not given)
    sc.add_argument("--slurm-partition", default=None, help=_slurm_help("partition", "Slurm partition"))
    sc.add_argument("--slurm-time", default=None, help=_slurm_help("time", "time limit per job: minutes or [D-]HH:MM:SS"))
    sc.add_argument("--slurm-gpus", type=int, default=None,
                    help=_slurm_help("gpus", "GPUs per job; more train the cell with DDP, 0 runs on CPUs"))  # fmt: skip
    sc.add_argument("--slurm-cpus", type=int, default=None, help=_slurm_help("cpus", "CPUs per task"))
    sc.add_argument("--slurm-mem", default=None, help=_slurm_help("mem", "memory per node, e.g. 64G"))
    sc.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                    help="further sbatch option, e.g. account=proj or qos=high (repeatable)")  # fmt: skip
    sc.add_argument("--wait", action="store_true", help="slurm: wait for every job, then write the report")

    rep = sub.add_parser("report", help="redraw leaderboards and plots from DIR/results.csv alone")
    rep.add_argument("dir", help="a results folder holding results.csv")
    rep.add_argument("--no-plots", action="store_true", help="tables only")
    rep.add_argument("--repair", action="store_true",
                     help="rebuild a damaged results.csv: keep its sound rows, put back each cell's rows from its "
                          "metrics.csv (the damaged table is kept as results.csv.damaged)")  # fmt: skip

    data = sub.add_parser("data", help="show a long-tailed split: per-class counts, groups, fingerprint")
    dc = DataConfig()  # the defaults of the `data` command are DataConfig's
    data.add_argument("--dataset", default=dc.dataset, help=_Later(lambda: f"{_dataset_help()}; default {dc.dataset}"))
    data.add_argument("--imbalance", type=float, default=dc.imbalance, help=f"n_min / n_max, in (0, 1] (default {dc.imbalance})")
    data.add_argument("--profile", default=dc.profile, help=_choices_help(DataConfig, "profile"))
    data.add_argument("--counts-file", default=dc.counts_file, help="per-class counts (profile file)")
    data.add_argument("--n-max", type=int, default=dc.n_max,
                      help="head-class size (default: the smallest class of the pool, i.e. the balanced class size)")
    data.add_argument("--split-seed", type=int, default=dc.split_seed, help=f"seed of the selection (default {dc.split_seed})")
    data.add_argument("--groups", default=dc.groups, help=_choices_help(DataConfig, "groups"))
    data.add_argument("--resolution", type=int, default=dc.resolution, help="side in pixels (default: the native size)")
    data.add_argument("--data-root", default=dc.data_root, help="folder holding (or receiving) dataset files")
    data.add_argument("--reference-folder", default=dc.reference_folder,
                      help="imagefolder: a separate evaluation folder with the same class subfolders")
    data.add_argument("--reference-protocol", default=dc.reference_protocol,
                      help="folders without a reference split: auto | holdout | holdout-only | balanced | folder")
    data.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="any data.* or eval.* field, e.g. --set data.reference_fraction=0.3 or "
                           "--set eval.reference=train-balanced")  # fmt: skip
    data.add_argument("--format", choices=["table", "csv"], default="table")

    ev = sub.add_parser("evaluate", help="score class-labelled samples from any model with the benchmark protocol")
    _add_config_options(ev)
    ev.add_argument("--samples", required=True, help=".npz with images and labels, or a folder with one subfolder per class")
    ev.add_argument("--name", required=True, help="method name for the rows (e.g. my-model)")
    ev.add_argument("--imbalance", type=float, default=None, help="the imbalance the model was trained at")
    ev.add_argument("--seed", type=int, default=0, help="seed of the evaluation (downstream classifiers, KID subsets)")
    ev.add_argument("--force", action="store_true",
                    help="replace the rows already written at this point (name, seed, --train-steps, --guidance)")
    ev.add_argument("--train-steps", type=int, default=None,
                    help="training steps of the model, recorded in the rows; each (steps, guidance) of a name is a "
                         "point of its curves, the largest step its main point")  # fmt: skip
    ev.add_argument("--guidance", type=float, default=None, help="guidance scale of the samples, recorded in the rows")
    ev.add_argument("--out", default=None, help="results folder (default results/<preset>)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")

    lst = sub.add_parser("list", help="list presets, protocols, methods, datasets, feature spaces, launchers and options")
    _add_plugin_option(lst)

    chk = sub.add_parser("check-method", help="run the method contracts (the test suite's) on a method, on the CPU")
    chk.add_argument("name", help="a method name, e.g. mymethod or mymethod+resample")
    _add_plugin_option(chk)
    chk.add_argument("--contract", dest="contracts", action="append", default=None, metavar="NAME",
                     help="run only this contract (repeatable): class-probs, sample-weights, loss-terms, resume, "
                          "two-processes")  # fmt: skip

    exp = sub.add_parser("export", help="write a finished cell's model as model.safetensors + model.json")
    exp.add_argument("cells", nargs="+", metavar="CELL",
                     help="a cell folder (runs/<dataset>/<profile>-<imbalance>/<method>/seed<k>) or its model.pt")
    exp.add_argument("--to", default=None, help="folder to write into (default: beside model.pt; one cell only)")
    return parser


def resolve_config(args: argparse.Namespace) -> Config:
    cfg = get_preset(args.preset, args.protocol)
    if getattr(args, "dataset", None):
        cfg = replace(cfg, data=replace(cfg.data, dataset=args.dataset))
    if getattr(args, "data_root", None):
        cfg = replace(cfg, data=replace(cfg.data, data_root=args.data_root))
    if getattr(args, "inception_weights", None):
        cfg = replace(cfg, eval=replace(cfg.eval, inception_weights=args.inception_weights))
    if getattr(args, "device", None):
        cfg = replace(cfg, device=args.device)
    grid = cfg.grid
    if getattr(args, "methods", None):
        grid = replace(grid, methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()))
    if getattr(args, "imbalance", None) and isinstance(args.imbalance, tuple):
        grid = replace(grid, imbalances=args.imbalance)
    if getattr(args, "seeds", None):
        grid = replace(grid, seeds=args.seeds)
    cfg = apply_overrides(replace(cfg, grid=grid), args.overrides)
    keys = {pair.split("=", 1)[0].strip() for pair in args.overrides or []}
    if "sample.n_per_class" in keys and "sample.n_total" not in keys:  # asked for by name: it wins over the
        cfg = replace(cfg, sample=replace(cfg.sample, n_total=None))  # protocol's total (recorded as none)
    validate(cfg)
    return cfg


def early_checks(args: argparse.Namespace) -> None:
    """The checks that need neither the methods nor torch: the preset and protocol names, and every ``--set``
    key and value outside ``method.`` (a method's options are known once the methods, plugins included,
    are loaded), so a misspelt name answers in a tenth of a second."""
    if not hasattr(args, "preset"):
        return
    cfg = get_preset(args.preset, getattr(args, "protocol", None))
    apply_overrides(cfg, [pair for pair in getattr(args, "overrides", None) or []
                          if not pair.strip().startswith("method.")])  # fmt: skip


def validate(cfg: Config) -> None:
    """Check names and ranges up front, before any cell starts."""
    from benchmark.harness.preflight import check_config
    from methods import fine_tuner

    check_config(cfg)
    for name in cfg.grid.methods:
        tuner = fine_tuner(name)
        if tuner is not None:  # its options (e.g. cbdm-ft's start fraction) fail here, before any cell runs
            tuner.fine_tune_config(cfg)


def unread_method_options(cfg: Config, keys: set[str]) -> list[str]:
    """The ``method.<name>.<option>`` keys among ``keys`` that no method of the grid reads (a cbdm option on a
    grid without cbdm would be silently ignored)."""
    from benchmark.core.config import method_section
    from methods import resolve

    read = {section for name in cfg.grid.methods for section in resolve(name).sections}
    return sorted(k for k in keys if k.startswith("method.") and method_section(k.split(".")[1]) not in read)


def cmd_run(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs} must be at least 1")
    keys = {pair.split("=", 1)[0].strip() for pair in args.overrides}
    if "data.imbalance" in keys:  # each cell's imbalance comes from the grid
        raise ConfigError("data.imbalance has no effect on `run`: each cell takes its imbalance from grid.imbalances; "
                          "pass --imbalance 0.01,0.1 (or --set grid.imbalances=0.01,0.1) instead")
    cfg = resolve_config(args)
    if cfg.data.profile not in ("exp", "step") and (args.imbalance or "grid.imbalances" in keys):
        raise ConfigError(f"--imbalance has no effect under data.profile={cfg.data.profile}: the data is used with "
                          "its own class counts; drop --imbalance, or make a long tail with --set data.profile=exp")
    unread = unread_method_options(cfg, keys)
    if unread:  # a note, not an error: one list of --set options may serve several runs of a study
        print(f"note: {', '.join(unread)} set, but no method of this grid ({', '.join(cfg.grid.methods)}) reads it; "
              "it changes nothing here", flush=True)  # fmt: skip
    for name, values in (("--seeds", cfg.grid.seeds), ("--imbalance", cfg.grid.imbalances)):
        if len(set(values)) < len(values):
            print(f"note: {name} lists a value more than once; each runs once: "
                  + ",".join(f"{v:g}" for v in dict.fromkeys(values)), flush=True)
    from benchmark.harness.cells import expand_grid
    from benchmark.harness.grid import summarize

    out = Path(args.out) if args.out else Path("results") / cfg.preset
    cells = expand_grid(cfg)
    if args.dry_run:
        print(to_json(cfg))
        print(f"\n{len(cells)} cells into {out}/runs/:")
        for cell in cells:
            print(f"  {cell.name}  ->  {cell.folder(out)}")
        return 0
    from benchmark.core.distributed import current, init_from_env
    from benchmark.harness.launch import LAUNCHERS, SlurmOptions

    launch = LAUNCHERS.get(args.launcher)
    d = init_from_env(cfg.device)
    if d.world > 1 and (args.launcher != "local" or args.jobs > 1):
        raise ConfigError("under torchrun every process runs the same cells: drop --launcher/--jobs, "
                          "or submit with --launcher slurm --slurm-gpus N from a plain shell")  # fmt: skip
    if (args.launcher != "local" or args.jobs > 1) and d.main:  # run_grid says it itself for the local run
        from benchmark.harness.grid import evaluation_check

        for line in evaluation_check(cfg, cells):
            print(line, flush=True)
    given = dict(partition=args.slurm_partition, time=args.slurm_time, gpus=args.slurm_gpus, cpus=args.slurm_cpus,
                 mem=args.slurm_mem)  # fmt: skip
    opts = SlurmOptions(**{k: v for k, v in given.items() if v is not None}, extra=tuple(args.slurm_extra), wait=args.wait)
    if args.rescore and args.force:
        raise ConfigError("--rescore re-evaluates from the stored samples and --force retrains everything: pick one")
    from benchmark.harness.writer import one_writer

    with one_writer(out, main=d.main):  # one run per results folder: its workers (--jobs, ranks, jobs) share it
        if args.rescore and d.main:
            from benchmark.harness.grid import prepare_rescore

            lines = prepare_rescore(cfg, out)
            print(f"rescore: {len(lines)} finished cell(s)" + (":" if lines else " (nothing to rescore yet)"), flush=True)
            for line in lines:
                print(line, flush=True)
        started = time.monotonic()
        outcomes = launch(cfg, out, force=args.force, progress=not args.no_progress, jobs=args.jobs, opts=opts)
    if outcomes is None:
        print(f"\njobs submitted; cell folders hold slurm.json and submitit/ logs. `ltgen-bench report {out}` "
              "redraws the tables from what has finished; rerun this command to resubmit unfinished cells.")  # fmt: skip
        return 0
    if not current().main:
        return 0
    if not args.no_report and (out / "results.csv").exists():
        from benchmark.report.build import make_report

        make_report(out)
    print(summarize(outcomes, out, wall=time.monotonic() - started))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def cmd_report(args: argparse.Namespace) -> int:
    from benchmark.report.build import make_report

    if args.repair:
        from benchmark.harness.results import repair_results
        from benchmark.harness.writer import one_writer

        with one_writer(Path(args.dir)):
            for line in repair_results(Path(args.dir)):
                print(f"repair: {line}")
    try:
        paths = make_report(Path(args.dir), plots=not args.no_plots)
    except PermissionError as exc:
        raise ConfigError(f"cannot write the report into {args.dir} ({exc.strerror}: {exc.filename}); make the folder "
                          "writable, or copy its results.csv into a folder you can write and run `report` there") from None
    for p in paths:
        print(p)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from benchmark.engine.export import export_weights, find_model

    if args.to and len(args.cells) > 1:
        raise ConfigError("--to takes one cell; export several cells beside their model.pt (without --to)")
    for cell in args.cells:
        for path in export_weights(find_model(Path(cell)), Path(args.to) if args.to else None):
            print(path)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    data = DataConfig(
        dataset=args.dataset, imbalance=args.imbalance, profile=args.profile, counts_file=args.counts_file,
        n_max=args.n_max, split_seed=args.split_seed, groups=args.groups, resolution=args.resolution,
        data_root=args.data_root, reference_folder=args.reference_folder, reference_protocol=args.reference_protocol,
    )  # fmt: skip
    cfg = apply_overrides(Config(data=data), args.overrides)
    from benchmark.data import build_dataset, computable_lines, data_table

    ds = build_dataset(cfg.data)
    table = data_table(ds, reference=cfg.eval.reference)
    if args.format == "csv":
        sys.stdout.write(table.to_csv(index=False))
        return 0
    print(table.to_string(index=False))
    print(f"\ntotal {int(ds.counts.sum())} images, {ds.num_classes} classes, profile {ds.profile}, "
          f"imbalance {ds.imbalance}, {ds.channels}x{ds.resolution}x{ds.resolution}")  # fmt: skip
    for group in GROUPS:
        classes = ds.group_classes(group)
        print(f"{group:>6}: {len(classes)} classes" + ("" if classes else "  (empty)"))
    print(f"fingerprint {ds.fingerprint}")
    label = f"{cfg.eval.reference}" + (f":{ds.source.reference_protocol}" if ds.source.reference_protocol else "")
    print(f"\nevaluation split: reference {label} ({ds.source.test_note}); the classifier evaluator trains on "
          f"eval_train (class-balanced), stops early on eval_val and is tested on eval_test "
          f"({int(table['eval_test'].sum())} images, smallest class {int(table['eval_test'].min())})")  # fmt: skip
    print("per-class metrics computable:")
    for line in computable_lines(table, min_ref_fid=cfg.eval.min_ref_fid, pr_k=cfg.eval.pr_k, dc_k=cfg.eval.dc_k):
        print(f"  {line}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.seed < 0:
        raise ConfigError(f"--seed {args.seed} must be 0 or more (it seeds the downstream classifiers and KID subsets)")
    cfg = resolve_config(args)
    from benchmark.harness.outside import evaluate_external

    if args.imbalance is not None:
        cfg = replace(cfg, data=replace(cfg.data, imbalance=args.imbalance))
    out = Path(args.out) if args.out else Path("results") / cfg.preset
    from benchmark.core.distributed import init_from_env
    from benchmark.harness.writer import one_writer

    d = init_from_env(cfg.device)  # under torchrun the processes split the feature extraction
    with one_writer(out, main=d.main):
        rows = evaluate_external(cfg, samples=Path(args.samples), name=args.name, seed=args.seed, out=out,
                                 progress=not args.no_progress, force=args.force, train_steps=args.train_steps,
                                 guidance=args.guidance)  # fmt: skip
        if not d.main:
            return 0
        if len(rows):  # else it said why nothing was written
            print(f"{len(rows)} rows for {args.name!r} written to {out / 'results.csv'}")
        from benchmark.report.build import make_report

        make_report(out, plots=True)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from benchmark.data import DATASETS
    from benchmark.eval.features import FEATURE_SPACES
    from benchmark.harness.launch import LAUNCHERS
    from methods import METHODS

    print("presets:")
    for name in PRESETS.names():
        print(f"  {name:<12} {preset_doc(name)}")
    print("protocols:")
    for name in PROTOCOLS.names():
        print(f"  {name:<12} {' '.join((PROTOCOLS.get(name).__doc__ or '').split())}")
    print("methods (compose with '+', e.g. cbdm+resample):")
    for name, cls in METHODS.items():
        print(f"  {name:<12} {' '.join((cls.__doc__ or '').split()).split('. ')[0]}")
    print("datasets:")
    for name in DATASETS.names():
        if name not in ("imagefolder", "listfile"):  # listed below with their argument
            print(f"  {name}")
    print("  imagefolder:PATH  (one subfolder per class)")
    print("  listfile:LIST     ('relative/path label' lines, the ImageNet-LT convention)")
    print("feature spaces:")
    for name in FEATURE_SPACES.names():
        print(f"  {name}")
    print("launchers (--launcher):")
    for name, fn in LAUNCHERS.items():
        print(f"  {name:<15} {fn.__doc__}")
    print("method options (--set method.<name>.<option>=VALUE; default, and range or values):")
    for key, default, allowed in method_option_lines():
        print(f"  {key:<28} {default!s:<12} {allowed}")
    print("options with a fixed set of values (--set KEY=VALUE; the first is the built-in default):")
    for key, values in choice_fields().items():
        print(f"  {key}")
        for value, doc in values.items():
            print(f"      {value:<16} {doc}")
    print("numeric options and their ranges (a value outside is refused before any work):")
    for key, bounds in bounded_fields().items():
        print(f"  {key:<32} {bounds.describe()}")
    return 0


def method_option_lines() -> list[tuple[str, object, str]]:
    """(key, default, range or values) of every registered method's options."""
    from dataclasses import fields

    from benchmark.core.config import Config

    lines, method = [], Config().method
    for section in fields(method):
        options = getattr(method, section.name)
        for f in fields(options):
            default = getattr(options, f.name)
            bounds, values = f.metadata.get("bounds"), f.metadata.get("choices")
            allowed = bounds.describe() if bounds else " | ".join(values) if values else ""
            lines.append((f"method.{section.name}.{f.name}", default, allowed))
    return lines


def cmd_check_method(args: argparse.Namespace) -> int:
    from methods import METHODS, resolve
    from methods.base import overrides
    from methods.contracts import CONTRACTS, check_method

    spec = resolve(args.name)  # an unknown or clashing name: exit 2 naming the fix
    unknown = [c for c in args.contracts or () if c not in CONTRACTS]
    if unknown:
        raise ConfigError(f"unknown contract {unknown[0]!r}; valid: {', '.join(CONTRACTS)}")
    names = [args.name]
    if len(spec.parts) == 1 and "resample" in METHODS and not overrides(spec.method_class, "class_probs"):
        names.append(f"{args.name}+resample")  # as the test suite does: composed with class sampling too
    outcomes = []
    for name in names:
        outcomes += check_method(name, contracts=args.contracts, report=lambda o: print(o.line(), flush=True))
    failed = [o for o in outcomes if not o.passed]
    total = sum(o.seconds for o in outcomes)
    if failed:
        print(f"{len(failed)} of {len(outcomes)} contracts failed ({total:.1f} s): "
              + ", ".join(f"{o.method} {o.contract}" for o in failed))  # fmt: skip
        return 1
    print(f"all {len(outcomes)} contracts passed ({total:.1f} s)")
    return 0


COMMANDS = {"run": cmd_run, "report": cmd_report, "data": cmd_data, "evaluate": cmd_evaluate, "list": cmd_list,
            "export": cmd_export, "check-method": cmd_check_method}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv or argv[0].startswith("--") and argv[0] not in ("--help", "-h", "--version"):
        argv = ["run", *argv]
    args = parser.parse_args(argv)
    try:
        early_checks(args)  # before the methods (and torch) are imported
        if hasattr(args, "plugins"):  # before any config is built: a plugin's options are a section of it
            from methods.plugins import load_plugins

            load_plugins(args.plugins)
        rc = COMMANDS[args.command](args)
    except DiskFullError as exc:  # good input, a full disk: every file written before it is intact
        print(f"error: {exc}", file=sys.stderr)
        shutdown()
        return 1
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        grid = sys.modules.get("benchmark.harness.grid")  # not imported: no cell ran
        # a rank that failed inside a cell exits with the group up, so torchrun stops the others for its
        # reason, not for a peer's closed connection
        if grid is None or not isinstance(exc, grid.RankFailure):
            shutdown()
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume where it stopped", file=sys.stderr)
        return 130
    shutdown()  # under torchrun: leave the process group before exit, not at interpreter teardown
    return rc


def shutdown() -> None:
    """Leave the process group, if this process ever imported the module that joins one: bad input is
    answered before torch is imported (a second, not the several it takes to load torch)."""
    distributed = sys.modules.get("benchmark.core.distributed")
    if distributed is not None:
        distributed.shutdown()
