"""The ``infoplane`` command: argument parsing and messages over infoplane's public API.

Exit status: 0 on success; 2 on a usage or settings problem (bad arguments, a model file that does not follow the
contract or whose ``layers`` or loss do not fit its network, an existing run without --resume/--overwrite, resuming
with other settings, an output that cannot be created or written), found before anything trains; 1 on a failure
while running; 130 when interrupted (Ctrl-C), after what was measured has been written. ``plot``, ``animate``,
``report`` and ``export`` agree: 2 for what the user gave (not a run, an unwritable ``--out``), 1 for a failure
while drawing. Errors print one line first; --verbose adds the traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import textwrap
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn, Sequence

if TYPE_CHECKING:
    from infoplane.estimators.base import Estimator

MODEL_FILE_HELP = """\
model file contract:
  A Python file that defines either
    build_model()   returning a fresh torch.nn.Module (called once per seed), or
    model           a torch.nn.Module (then only one seed).
  Optional names, each replacing a default:
    data()                          -> (inputs, labels) tensors   (default: --data, else the 12-bit task)
    optimizer(parameters)           -> a torch optimizer          (default: Adam, --lr)
    optimizer = "sam", rho = 0.05   a named optimizer instead: adam, sgd, sam, asam (SAM/ASAM around SGD)
    loss                            callable(outputs, labels)     (default: cross-entropy)
    layers                          names, globs or module types to record (default: every hidden layer
                                    after its nonlinearity, plus the softmax output)
    train_step(model, batch, optimizer)   one custom training step (seeds then train one at a time)

examples:
  infoplane track examples/tishby_tanh.py --fraction 0.05 --fraction 0.85 --epochs 2000 --seeds 4
  infoplane track examples/digits_mlp.py --estimator kde --noise-var 0.1 --estimator adaptive
  infoplane plot runs/tishby_tanh/fraction-0.05 runs/tishby_tanh/fraction-0.85 --out compare.pdf
"""


class UsageError(Exception):
    """A problem with what the user asked for (exit status 2)."""


#: The option of ``infoplane track`` that sets each argument of :func:`infoplane.experiment.track`: the library's
#: errors name the arguments (`lr`, `resume=True`), the command line names its options instead.
FLAGS = {"data": "--data", "data_root": "--data-root", "download": "--download", "fractions": "--fraction", "split": "--split", "fixed_split": "--fixed-split",
         "probe": "--probe", "seeds": "--seeds", "seed": "--seed", "epochs": "--epochs", "lr": "--lr",
         "batch_size": "--batch-size", "optimizer": "--optimizer",
         "estimators": "--estimator, --bins, --range, --bin-width or --noise-var", "schedule": "--schedule",
         "device": "--device", "out": "--out", "resume": "--resume", "overwrite": "--overwrite",
         "keep_activations": "--keep-activations", "vectorize": "--no-vectorize", "reduce": "--reduce",
         "ray": "--ray", "ray_cpus": "--ray-cpus", "ray_gpus": "--ray-gpus", "gradients": "--no-gradients",
         "label_noise": "--label-noise",
         "random_labels": "--random-labels", "shuffled_pixels": "--shuffled-pixels",
         "random_pixels": "--random-pixels", "gaussian_inputs": "--gaussian-inputs", "rho": "--rho",
         "sharpness": "--sharpness", "sharpness_samples": "--sharpness-samples", "sharpness_rho": "--sharpness-rho"}

# An argument as the library's messages write it: `name`, `name=True`, `name=value`.
_ARGUMENT = re.compile(r"`(\w+)(?:=([^`]*))?`")


def as_flags(message: str, arguments: Sequence[str] | None = None) -> str:
    """A library message with the arguments of ``track()`` it names replaced by the command line's options.

    Parameters
    ----------
    message : str
        The message, naming arguments in backquotes: `` `lr` ``, `` `resume=True` ``, `` `probe='train'` ``.
    arguments : sequence of str, optional
        Replace only these arguments (an error's ``arguments``); None: every argument in :data:`FLAGS`.

    Returns
    -------
    str
        The message with ``--lr``, ``--resume``, ``--probe train`` in their place.
    """
    def option(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if name not in FLAGS or (arguments is not None and name not in arguments):
            return match.group(0)
        if value is None or value == "True" or (value == "False" and FLAGS[name].startswith("--no-")):
            return FLAGS[name]
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        return f"{FLAGS[name]} {value}"

    return _ARGUMENT.sub(option, message)


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse type: ``convert`` the text and require ``ok(value)``, else say what was expected."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_positive_float = _checked(float, lambda v: 0 < v < float("inf"), "a positive number")
_fraction = _checked(float, lambda v: 0 < v <= 1, "a number with 0 < F <= 1 (a training fraction)")
_probability = _checked(float, lambda v: 0 <= v <= 1, "a probability P with 0 <= P <= 1")


_batch_int = _checked(int, lambda v: v >= 1, "a positive integer or full")


def _batch_size(text: str) -> int | str:
    """``--batch-size``: a positive integer, or ``full``."""
    return "full" if text.strip().lower() == "full" else _batch_int(text)


def _schedule(text: str, epochs: int) -> Any:
    import infoplane

    kind, _, arg = text.partition(":")
    try:
        if kind == "log":
            return infoplane.log_schedule(epochs, int(arg or 400))
        if kind == "saxe":
            return infoplane.saxe_schedule(epochs)
        if kind == "every":
            return infoplane.every(int(arg), epochs)
    except ValueError as err:
        raise UsageError(f"--schedule {text}: {err}") from None
    raise UsageError(f"--schedule must be log:N, saxe or every:K; got {text!r}")


def _reduce_spec(text):
    from infoplane.capture.reduce import parse

    try:
        return parse(text).spec
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _estimators(args: argparse.Namespace) -> list[Estimator]:
    from infoplane import KDE, KNN, Binning, Discrete, Noisy, Renyi

    names = args.estimator or ["binning"]
    made: list[Estimator] = []
    for name in dict.fromkeys(names):
        if name == "binning":
            made.append(Binning(bins=args.bins, range=(args.range[0], args.range[1])))
        elif name == "binning-width":
            made.append(Binning(width=args.bin_width))
        elif name == "adaptive":
            made.append(Binning(bins=args.bins, adaptive=True))
        elif name == "discrete":
            made.append(Discrete())
        elif name == "noisy":
            made.append(Noisy(noise_var=args.noise_var))  # None: each layer's noise, read from the network
        elif name in ("knn", "renyi"):  # defaults; the tracker passes the probe inputs for I(X;T)
            made.append(KNN() if name == "knn" else Renyi())
        else:
            made.append(KDE(noise_var=1e-3 if args.noise_var is None else args.noise_var))
    return made


class _Parser(argparse.ArgumentParser):
    """Prints the one-line error before the usage text, and exits with status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        self.print_usage(sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``infoplane`` command (subcommands ``track`` and ``plot``).

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = _Parser(
        prog="infoplane", description="Information planes of neural networks while they train.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    common = _Parser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="on an error, also print the traceback")

    track = sub.add_parser(
        "track", help="train a model file and record its information plane",
        description="Train the model defined in MODEL_FILE at each training fraction and seed, record the "
                    "information plane of its layers, and write run directories, figures and a summary.",
        epilog=MODEL_FILE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])
    track.add_argument("model_file", metavar="MODEL_FILE", help="Python file defining build_model() or model")
    g = track.add_argument_group("data")
    g.add_argument("--data", help="tishby12, digits, mnist, fashion-mnist, cifar10 (their distribution files, "
                                  "in $INFOPLANE_DATA or ~/.cache/infoplane/datasets), or a .npz file with arrays "
                                  "inputs and labels (default: the file's data(), else tishby12)")
    g.add_argument("--data-root", metavar="DIR",
                   help="where the files of mnist, fashion-mnist and cifar10 are (default $INFOPLANE_DATA, else "
                        "~/.cache/infoplane/datasets)")
    g.add_argument("--download", action="store_true",
                   help="fetch the files of mnist, fashion-mnist or cifar10 when missing (checked against the "
                        "published checksums); nothing is downloaded without it")
    g.add_argument("--fraction", type=_fraction, action="append",
                   help="training fraction 0 < F <= 1; repeat for several (default 0.8)")
    g.add_argument("--split", choices=["stratified", "original"], default="stratified",
                   help="stratified random subset (default), or the original work's first-F rows")
    g.add_argument("--fixed-split", action="store_true", help="one split for all seeds (default: one per seed)")
    g.add_argument("--probe", choices=["all", "train", "test"], default="all",
                   help="samples on which the plane is measured (default: all)")
    g = track.add_argument_group("corrupted data (drawn once per seed: seed s trains on its own draw; the clean labels "
                                   "are tracked as y_clean)")
    g.add_argument("--label-noise", metavar="P", type=_probability, default=0.0,
                   help="redraw each label with probability P in [0, 1], uniformly from all classes")
    g.add_argument("--random-labels", action="store_true", help="redraw every label (--label-noise 1)")
    g.add_argument("--shuffled-pixels", action="store_true",
                   help="reorder the input features by one permutation (per seed), the same for every sample")
    g.add_argument("--random-pixels", action="store_true",
                   help="reorder the input features of each sample by its own permutation")
    g.add_argument("--gaussian-inputs", action="store_true",
                   help="replace the inputs by Gaussian samples with the data's mean and covariance")
    g = track.add_argument_group("training")
    g.add_argument("--seeds", type=_positive_int, default=1, help="independent initialisations (default 1)")
    g.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    g.add_argument("--epochs", type=_positive_int, default=8000,
                   help="default 8000; epoch e is the network after e epochs, 0 the initialisation, and every "
                        "schedule ends with the trained network (epoch --epochs)")
    g.add_argument("--lr", type=_positive_float, help="learning rate (default 4e-4)")
    g.add_argument("--batch-size", type=_batch_size, metavar="N|full",
                   help="mini-batch size, or full for one batch of the whole training set per epoch (full-batch "
                        "gradient descent); default: the file's batch_size, else 256")
    g.add_argument("--optimizer", choices=["adam", "sgd", "sam", "asam"],
                   help="default adam (or the file's optimizer); sam and asam: SAM / ASAM around plain SGD at --lr, "
                        "trained on the torch path one seed at a time")
    g.add_argument("--rho", type=_positive_float, help="radius of SAM's neighbourhood with --optimizer sam or asam "
                                                       "(default 0.05 for sam, 0.5 for asam)")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    g.add_argument("--no-vectorize", action="store_true", help="train seeds one at a time")
    g = track.add_argument_group("estimation")
    g.add_argument("--estimator", action="append",
                   choices=["binning", "binning-width", "adaptive", "kde", "discrete", "noisy", "knn", "renyi"],
                   help="repeatable (default binning)")
    g.add_argument("--bins", type=_positive_int, default=30, help="edge points for binning/adaptive (default 30)")
    g.add_argument("--range", type=float, nargs=2, default=(-1.0, 1.0), metavar=("LOW", "HIGH"),
                   help="fixed binning range (default -1 1)")
    g.add_argument("--bin-width", type=_positive_float, default=0.07, help="binning-width cell (default 0.07)")
    g.add_argument("--noise-var", type=_positive_float,
                   help="noise variance of kde (default 1e-3) and noisy (default: per layer, the noise the "
                        "network's add_noise modules add, after the layer's --reduce)")
    g.add_argument("--schedule", default="log:400", help="log:N (default log:400), saxe, or every:K")
    g.add_argument("--reduce", metavar="SPEC", type=_reduce_spec,
                   help="layer reduction before estimating: flatten (default), channel-mean, pca:K, random:K")
    g = track.add_argument_group("sharpness (see docs/sharpness.md)")
    g.add_argument("--sharpness", metavar="MEASURE[,MEASURE...]",
                   help="record sharpness measures at each recorded epoch (off by default: they cost several "
                        "forward and backward passes each): hessian_top_eigenvalue, hessian_trace, sam_sharpness, "
                        "adaptive_sharpness, random_sharpness; written to sharpness.csv and sharpness.png")
    g.add_argument("--sharpness-samples", type=_positive_int, default=1024, metavar="N",
                   help="training rows (per seed, drawn once) the measures use (default 1024)")
    g.add_argument("--sharpness-rho", type=_positive_float, metavar="R",
                   help="radius of sam_sharpness, adaptive_sharpness and random_sharpness (default 0.05; 0.5 for "
                        "adaptive_sharpness)")
    g = track.add_argument_group("output")
    g.add_argument("--out", help="parent of the run directories (default runs/<model file stem>)")
    g.add_argument("--resume", action="store_true",
                   help="continue unfinished runs in --out; with a larger --epochs, train finished runs on")
    g.add_argument("--overwrite", action="store_true", help="replace runs in --out")
    g.add_argument("--keep-activations", action="store_true",
                   help="also save raw activations, to re-estimate later without retraining")
    g.add_argument("--no-plot", action="store_true", help="do not write figures")
    g.add_argument("--no-gradients", action="store_true",
                   help="do not record the per-layer gradient statistics (gradients.csv; recorded by default)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    # TensorBoard: each finished run is exported under DIR/<run directory name>
    g.add_argument("--tensorboard", metavar="DIR",
                   help="also write each run's scalars and plane figure as TensorBoard logs under DIR")
    _add_ray_options(track)

    plot = sub.add_parser("plot", help="draw the figures of run directories",
                          description="Draw information-plane figures of one or more run directories. A directory "
                                      "that holds fraction-* runs (the --out of infoplane track) stands for them all.",
                          parents=[common])
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("--out", help="file for the main figure (.png, .pdf or .svg)")
    plot.add_argument("--estimator", help="estimator name to plot (default: the run's first)")
    _add_label(plot)
    # infoplane export RUN --tensorboard DIR
    export = sub.add_parser("export", help="write finished runs to TensorBoard",
                            description="Write the scalars and the plane figure of run directories as "
                                        "TensorBoard logs (one subdirectory per run when several are given).",
                            parents=[common])
    export.add_argument("runs", nargs="+", metavar="RUN_DIR")
    export.add_argument("--tensorboard", metavar="DIR", required=True, help="TensorBoard log directory")
    _add_animate_report(sub, common)
    return parser


def _export_tensorboard(run_dirs, logdir):
    """Export runs into ``logdir`` (a subdirectory per run when there are several)."""
    import os

    from infoplane.integrations.tensorboard import export_tensorboard
    from infoplane.runs.format import NotARunError, read_meta

    paths = []
    for run_dir in run_dirs:
        run_dir = os.fspath(run_dir)
        try:  # the run-directory module decides what is a run, and says why not
            read_meta(run_dir)
        except NotARunError as err:
            raise UsageError(str(err)) from None
        target = logdir if len(run_dirs) == 1 else os.path.join(logdir, os.path.basename(os.path.normpath(run_dir)))
        paths.append(export_tensorboard(run_dir, target))
    return paths


def cmd_export(args: argparse.Namespace) -> int:
    for path in _writing("--tensorboard", args.tensorboard, lambda: _export_tensorboard(args.runs, args.tensorboard),
                         file=False):
        print(f"tensorboard: {path}")
    return 0


def _writing(option: str | None, path: str | None, fn: Callable[[], Any], file: bool = True) -> Any:
    """Run ``fn``, which writes to ``path`` (the value of ``option``: a file, or a directory unless ``file``); a
    file or folder that cannot be written is a problem with what the user asked for (exit status 2), whatever the
    operating system's reason. A file's folder is made first, so that most such problems are found before
    drawing."""
    from infoplane.runs.lifecycle import os_reason

    where = f"{option} {path}" if option and path else "the figures"
    try:
        if path and file:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return fn()
    except OSError as err:
        raise UsageError(f"cannot write {where}: {os_reason(err)}") from err


def _add_animate_report(sub, common):
    anim = sub.add_parser("animate", help="write an animated information plane (.gif, or .mp4 with [video])",
                          description="Animate the information plane of one or more run directories: one frame "
                                      "per recorded epoch (or --frames), runs side by side in sync.",
                          parents=[common])
    anim.add_argument("runs", nargs="+", metavar="RUN_DIR")
    anim.add_argument("--out", default="plane.gif", help="plane.gif (default) or a .mp4 file")
    anim.add_argument("--estimator", help="estimator name (default: the run's first)")
    anim.add_argument("--frames", type=_positive_int, help="frame count, interpolated (default: one per epoch)")
    anim.add_argument("--fps", type=_positive_float, help="frames per second (default: about 12 s in all)")
    _add_label(anim)
    rep = sub.add_parser("report", help="write a self-contained interactive HTML report (needs [report])",
                         description="Write one HTML file (Plotly, inlined, works offline) with the information "
                                     "planes, an epoch slider, curves, metrics and the runs' settings.",
                         parents=[common])
    rep.add_argument("runs", nargs="+", metavar="RUN_DIR")
    rep.add_argument("--out", default="report.html", help="default report.html")
    rep.add_argument("--frames", type=_positive_int, help="slider positions (default: one per epoch)")
    _add_label(rep)


def _add_label(parser):
    parser.add_argument("--label", action="append", metavar="LABEL",
                        help="the name of a RUN_DIR in titles, once per RUN_DIR in the same order (default: the run's "
                             "own name, else its directory's name)")


def _labels(args: argparse.Namespace) -> list[str] | None:
    """The --label values, one per RUN_DIR argument, or None when none was given."""
    if args.label is None:
        return None
    if len(args.label) != len(args.runs):
        raise UsageError(f"--label is given {len(args.label)} times for {len(args.runs)} run directories; give "
                         f"one --label per RUN_DIR, in the same order")
    return list(args.label)


def _add_ray_options(track):
    g = track.add_argument_group("Ray (needs infoplane[ray]; see docs/scale.md)")
    g.add_argument("--ray", nargs="?", const=True, metavar="ADDRESS",
                   help="run each fraction (all its seeds) as one Ray task: alone, on a new local Ray instance; "
                        "with auto, HOST:PORT or ray://HOST:PORT, on that cluster (--out must be a directory "
                        "every node sees)")
    g.add_argument("--ray-cpus", type=_positive_float, metavar="N", help="CPUs each task reserves (default 1)")
    g.add_argument("--ray-gpus", type=_checked(float, lambda v: 0 <= v < float("inf"), "a number >= 0"),
                   metavar="G", help="GPUs each task reserves (default 1 with --device cuda, else 0)")


def _ray_kwargs(args):
    """track()'s Ray arguments; --ray-cpus/--ray-gpus only mean something with --ray."""
    if args.ray is None:
        given = [name for name, value in (("--ray-cpus", args.ray_cpus), ("--ray-gpus", args.ray_gpus))
                 if value is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} set the resources of Ray tasks: add --ray, or drop them")
        return {}
    return {"ray": args.ray, "ray_cpus": 1.0 if args.ray_cpus is None else args.ray_cpus, "ray_gpus": args.ray_gpus}


def _with_saturation_warnings(fn):
    import warnings

    import infoplane.plot as plot

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", plot.SaturationWarning)
        result = fn()
    for message in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, plot.SaturationWarning)):
        print(f"warning: {message}", file=sys.stderr)
    return result


def cmd_animate(args: argparse.Namespace) -> int:
    import infoplane.plot as plot

    try:
        labels = _labels(args)
        path = _writing("--out", args.out, lambda: _with_saturation_warnings(
            lambda: plot.animate(args.runs, out=args.out, estimator=args.estimator, frames=args.frames,
                                 fps=args.fps, titles=labels)))
    except ValueError as err:  # not a run, an empty run, runs of different data, an unknown estimator or type
        raise UsageError(str(err)) from err
    print(path)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import infoplane

    try:
        labels = _labels(args)
        path = _writing("--out", args.out, lambda: infoplane.report(args.runs, out=args.out, frames=args.frames,
                                                                    titles=labels))
    except ValueError as err:
        raise UsageError(str(err)) from err
    print(path)
    return 0


@contextlib.contextmanager
def _advice_as_warnings() -> Iterator[None]:
    """Print the estimators' advice (a fixed-range binning that does not fit a layer) as ``warning: ...`` lines as
    it comes, each once; other warnings keep Python's own display."""
    import warnings

    from infoplane.estimators import BinRangeWarning

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, BinRangeWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("default", BinRangeWarning)
        warnings.showwarning = show
        yield


def cmd_track(args: argparse.Namespace) -> int:
    """Run ``infoplane track``; returns the exit status."""
    from infoplane.experiment.job import summary, track
    from infoplane.experiment.raysweep import RaySweepError  # Ray itself is imported only with --ray

    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    try:
        estimators = _estimators(args)
    except ValueError as err:  # e.g. --range 1 -1
        raise UsageError(str(err)) from err
    schedule = _schedule(args.schedule, args.epochs)
    ray_kwargs = _ray_kwargs(args)
    if args.tensorboard:  # an output found unwritable after hours of training would lose the logs
        try:
            os.makedirs(args.tensorboard, exist_ok=True)
        except OSError as err:
            from infoplane.runs.lifecycle import os_reason

            raise UsageError(f"cannot create --tensorboard directory {args.tensorboard}: {os_reason(err)}") from err
    log = (lambda *a, **k: None) if args.quiet else (lambda msg: print(as_flags(msg), file=sys.stderr))
    try:
        with _advice_as_warnings():
            runs = track(args.model_file, data=args.data, data_root=args.data_root, download=args.download,
                         fractions=args.fraction or [0.8], split=args.split,
                         fixed_split=args.fixed_split, probe=args.probe, seeds=args.seeds, seed=args.seed,
                         epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, optimizer=args.optimizer,
                         estimators=estimators, schedule=schedule, device=args.device, out=args.out,
                         resume=args.resume, overwrite=args.overwrite, keep_activations=args.keep_activations,
                         vectorize=False if args.no_vectorize else "auto", progress=not args.quiet, reduce=args.reduce,
                         caller=["infoplane", *args.argv], log=log, gradients=not args.no_gradients,
                         label_noise=args.label_noise, random_labels=args.random_labels,
                         shuffled_pixels=args.shuffled_pixels, random_pixels=args.random_pixels,
                         gaussian_inputs=args.gaussian_inputs, rho=args.rho, sharpness=args.sharpness,
                         sharpness_samples=args.sharpness_samples, sharpness_rho=args.sharpness_rho, **ray_kwargs)
    except RaySweepError as err:  # the fractions that finished on Ray are summarised before the error
        if err.runs:
            print(summary(err.runs))
        raise
    print(summary(runs))
    if args.tensorboard:
        for path in _export_tensorboard([getattr(r, "path", r) for r in runs], args.tensorboard):
            print(f"tensorboard: {path}")
    if not args.no_plot:
        paths = _write_figures(runs, None, None)
        if args.sharpness:
            paths += _write_sharpness_figures(runs)
        for p in paths:
            print(f"figure: {p}")
    return 0


def _write_sharpness_figures(runs: Sequence) -> list[str]:
    """``sharpness.png`` in each run directory, beside the planes."""
    import os

    import matplotlib.pyplot as plt

    import infoplane.plot as plot

    paths = []
    for run in runs:
        if getattr(run, "path", None) and run.sharpness:
            path = os.path.join(run.path, "sharpness.png")
            fig = plot.sharpness_curves(run, out=path)
            plt.close(fig)
            paths.append(path)
    return paths


def _write_figures(runs: Sequence, out: str | None, estimator: str | None,
                   labels: Sequence[str] | None = None) -> list[str]:
    import warnings

    import infoplane.plot as plot

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", plot.SaturationWarning)
        paths = plot.write_figures(runs, out=out, estimator=estimator, labels=labels)
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"warning: {message}", file=sys.stderr)
    return paths


def _run_dirs(paths: Sequence[str], counts: list[int] | None = None) -> list[Path]:
    """The run directories the arguments name: a run itself, or a parent holding ``fraction-*`` runs (``counts``,
    when given, receives how many runs each argument stands for)."""
    found: list[Path] = []
    starts = []
    for text in paths:
        starts.append(len(found))
        path = Path(text)
        if not path.is_dir():
            raise UsageError(f"{text}: no such directory")
        if (path / "meta.json").is_file():
            found.append(path)
            continue
        inner = [d for d in path.glob("fraction-*") if (d / "meta.json").is_file()]
        if not inner:
            raise UsageError(f"{text} is not an infoplane run directory: it has no meta.json and no fraction-* runs "
                             f"inside; give a directory written by Tracker(out=...) or `infoplane track`")
        found += sorted(inner, key=_fraction_key)
    if counts is not None:
        counts[:] = [end - start for start, end in zip(starts, starts[1:] + [len(found)])]
    return found


def _fraction_key(path: Path) -> tuple:
    try:
        return (0, float(path.name.partition("-")[2]), path.name)
    except ValueError:
        return (1, 0.0, path.name)


def cmd_plot(args: argparse.Namespace) -> int:
    """Run ``infoplane plot``; returns the exit status."""
    labels = _labels(args)
    counts: list[int] = []
    runs = _run_dirs(args.runs, counts)
    if labels is not None:  # a parent of fraction-* runs lends its label to each of them
        labels = [label for label, k in zip(labels, counts) for _ in range(k)]
    try:
        paths = _writing("--out", args.out, lambda: _write_figures(runs, args.out, args.estimator, labels))
    except ValueError as err:  # not a run, runs of different data, an unknown estimator or file type
        raise UsageError(str(err)) from err
    for p in paths:
        print(p)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``infoplane`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 success, 1 failure while running, 2 usage or settings problem, 130 interrupted.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # recorded in each run's meta.json as the command line
    if args.command is None:
        parser.print_help()
        return 2
    from infoplane.data.modelfile import ModelFileError
    from infoplane.experiment.errors import ConfigError

    try:
        return {"track": cmd_track, "plot": cmd_plot, "export": cmd_export,
                "animate": cmd_animate, "report": cmd_report}[args.command](args)
    except (UsageError, ModelFileError, ConfigError, FileNotFoundError) as err:
        _fail(err, args.verbose)
        return 2
    except KeyboardInterrupt:
        if args.verbose:
            traceback.print_exc()
        again = "; continue with the same command and --resume" if args.command == "track" else ""
        print(f"infoplane: interrupted (what was measured is saved){again}", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the command line reports every failure in one line first
        _fail(err, args.verbose, hint=True)
        return 1


def _fail(err: BaseException, verbose: bool, hint: bool = False) -> None:
    """Print the error: its first line after ``infoplane: error:``, the rest indented, then the traceback
    with ``--verbose`` (or, for an unexpected failure, a pointer to ``--verbose``)."""
    text = str(err).strip() or type(err).__name__
    arguments = getattr(err, "arguments", None)
    if arguments:  # a library error naming the arguments of track(): name the options instead
        text = as_flags(text, arguments)
    first, _, rest = text.partition("\n")
    print(f"infoplane: error: {first}", file=sys.stderr)
    if rest:
        print(textwrap.indent(rest, "  "), file=sys.stderr)
    if verbose:
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    elif hint:
        print("  (--verbose shows the traceback)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
