"""The ``infoplane`` command: argument parsing and messages over infoplane's public API.

Exit status: 0 on success, 2 on a usage error (bad arguments, a model file that does not follow the contract,
an existing run without --resume/--overwrite), 1 on a failure while running. Errors print one line first.
"""
from __future__ import annotations

import argparse
import sys
import textwrap

MODEL_FILE_HELP = """\
model file contract:
  A Python file that defines either
    build_model()   returning a fresh torch.nn.Module (called once per seed), or
    model           a torch.nn.Module (then only one seed).
  Optional names, each replacing a default:
    data()                          -> (inputs, labels) tensors   (default: --data, else the 12-bit task)
    optimizer(parameters)           -> a torch optimizer          (default: Adam, --lr)
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


def _checked(convert, ok, what):
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


def _schedule(text, epochs):
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


def _estimators(args):
    from infoplane import KDE, KNN, Binning, Renyi  # KNN, Renyi: issue 11

    names = args.estimator or ["binning"]
    made = []
    for name in dict.fromkeys(names):
        if name == "binning":
            made.append(Binning(bins=args.bins, range=(args.range[0], args.range[1])))
        elif name == "binning-width":
            made.append(Binning(width=args.bin_width))
        elif name == "adaptive":
            made.append(Binning(bins=args.bins, adaptive=True))
        elif name in ("knn", "renyi"):  # issue 11: defaults; the tracker passes the probe inputs
            made.append(KNN() if name == "knn" else Renyi())
        else:
            made.append(KDE(noise_var=args.noise_var))
    return made


class _Parser(argparse.ArgumentParser):
    """Prints the one-line error before the usage text, and exits with status 2."""

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        self.print_usage(sys.stderr)
        sys.exit(2)


def build_parser():
    parser = _Parser(
        prog="infoplane", description="Information planes of neural networks while they train.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    track = sub.add_parser(
        "track", help="train a model file and record its information plane",
        description="Train the model defined in MODEL_FILE at each training fraction and seed, record the "
                    "information plane of its layers, and write run directories, figures and a summary.",
        epilog=MODEL_FILE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    track.add_argument("model_file", metavar="MODEL_FILE", help="Python file defining build_model() or model")
    g = track.add_argument_group("data")
    g.add_argument("--data", help="tishby12, digits, or a .npz file with arrays inputs and labels "
                                  "(default: the file's data(), else tishby12)")
    g.add_argument("--fraction", type=_fraction, action="append",
                   help="training fraction 0 < F <= 1; repeat for several (default 0.8)")
    g.add_argument("--split", choices=["stratified", "original"], default="stratified",
                   help="stratified random subset (default), or the original work's first-F rows")
    g.add_argument("--fixed-split", action="store_true", help="one split for all seeds (default: one per seed)")
    g.add_argument("--probe", choices=["all", "train", "test"], default="all",
                   help="samples on which the plane is measured (default: all)")
    g = track.add_argument_group("training")
    g.add_argument("--seeds", type=_positive_int, default=1, help="independent initialisations (default 1)")
    g.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    g.add_argument("--epochs", type=_positive_int, default=8000, help="default 8000")
    g.add_argument("--lr", type=_positive_float, help="learning rate (default 4e-4)")
    g.add_argument("--batch-size", type=_positive_int, default=256, help="default 256")
    g.add_argument("--optimizer", choices=["adam", "sgd"], help="default adam (or the file's optimizer())")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    g.add_argument("--no-vectorize", action="store_true", help="train seeds one at a time")
    g = track.add_argument_group("estimation")
    g.add_argument("--estimator", action="append", choices=["binning", "binning-width", "adaptive", "kde",
                                                               "knn", "renyi"],  # knn, renyi: issue 11
                   help="repeatable (default binning)")
    g.add_argument("--bins", type=_positive_int, default=30, help="edge points for binning/adaptive (default 30)")
    g.add_argument("--range", type=float, nargs=2, default=(-1.0, 1.0), metavar=("LOW", "HIGH"),
                   help="fixed binning range (default -1 1)")
    g.add_argument("--bin-width", type=_positive_float, default=0.07, help="binning-width cell (default 0.07)")
    g.add_argument("--noise-var", type=_positive_float, default=1e-3, help="KDE noise variance (default 1e-3)")
    g.add_argument("--schedule", default="log:400", help="log:N (default log:400), saxe, or every:K")
    g = track.add_argument_group("output")
    g.add_argument("--out", help="parent of the run directories (default runs/<model file stem>)")
    g.add_argument("--resume", action="store_true", help="continue unfinished runs in --out")
    g.add_argument("--overwrite", action="store_true", help="replace runs in --out")
    g.add_argument("--keep-activations", action="store_true",
                   help="also save raw activations, to re-estimate later without retraining")
    g.add_argument("--no-plot", action="store_true", help="do not write figures")
    g.add_argument("--quiet", action="store_true", help="no progress bar")

    plot = sub.add_parser("plot", help="draw the figures of run directories",
                          description="Draw information-plane figures of one or more run directories.")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("--out", help="file for the main figure (.png, .pdf or .svg)")
    plot.add_argument("--estimator", help="estimator name to plot (default: the run's first)")
    return parser


def cmd_track(args):
    from infoplane.experiment import summary, track

    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    try:
        estimators = _estimators(args)
    except ValueError as err:  # e.g. --range 1 -1
        raise UsageError(str(err)) from err
    schedule = _schedule(args.schedule, args.epochs)
    log = (lambda *a, **k: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    runs = track(args.model_file, data=args.data, fractions=args.fraction or [0.8], split=args.split,
                 fixed_split=args.fixed_split, probe=args.probe, seeds=args.seeds, seed=args.seed,
                 epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, optimizer=args.optimizer,
                 estimators=estimators, schedule=schedule, device=args.device, out=args.out,
                 resume=args.resume, overwrite=args.overwrite, keep_activations=args.keep_activations,
                 vectorize=False if args.no_vectorize else "auto", progress=not args.quiet,
                 caller=["infoplane", *args.argv], log=log)
    print(summary(runs))
    if not args.no_plot:
        paths = _write_figures(runs, None, None)
        for p in paths:
            print(f"figure: {p}")
    return 0


def _write_figures(runs, out, estimator):
    import warnings

    import infoplane.plot as plot

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", plot.SaturationWarning)
        paths = plot.write_figures(runs, out=out, estimator=estimator)
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"warning: {message}", file=sys.stderr)
    return paths


def cmd_plot(args):
    try:
        paths = _write_figures(args.runs, args.out, args.estimator)
    except ValueError as err:  # not a run, runs of different data, an unknown estimator or file type
        raise UsageError(str(err)) from err
    for p in paths:
        print(p)
    return 0


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # recorded in each run's meta.json as the command line
    if args.command is None:
        parser.print_help()
        return 2
    from infoplane.experiment import ConfigError
    from infoplane.modelfile import ModelFileError

    try:
        return {"track": cmd_track, "plot": cmd_plot}[args.command](args)
    except (UsageError, ModelFileError, ConfigError, FileNotFoundError) as err:
        _fail(err)
        return 2
    except KeyboardInterrupt:
        print("infoplane: interrupted; continue with the same command and --resume", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - the command line reports every failure in one line first
        _fail(err)
        return 1


def _fail(err):
    text = str(err).strip() or type(err).__name__
    first, _, rest = text.partition("\n")
    print(f"infoplane: error: {first}", file=sys.stderr)
    if rest:
        print(textwrap.indent(rest, "  "), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
