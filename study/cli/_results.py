"""``lrstudy export | dashboard``: reading a study's results, as a paper summary or in a browser.

Handlers import Optuna, matplotlib and optuna-dashboard lazily; neither command loads Keras.
"""

from __future__ import annotations

import argparse
import sys

from study.cli._common import add_storage_option, quiet_optuna, storage_url


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    export = subparsers.add_parser(
        "export",
        parents=[common],
        help="Summarise a study like the paper's tables: Markdown, CSV or JSON, and figures.",
    )
    add_storage_option(export)
    export.add_argument("--study", required=True, metavar="NAME", help="Study name.")
    export.add_argument(
        "--format",
        choices=("md", "csv", "json"),  # study.results.FORMATS, not imported: --help stays fast
        default="md",
        help="What to print on stdout without --out (default md); csv has one row per trial.",
    )
    export.add_argument(
        "--out",
        metavar="DIR",
        help="Write trials.csv, summary.json, summary.md and PNG figures into DIR instead.",
    )
    export.add_argument(
        "--artifacts",
        metavar="DIR",
        help="This machine's artifacts folder (the spec's study.artifacts), if the study's "
        "files moved; predictions are read from its artifact store.",
    )
    export.add_argument(
        "--resamples",
        type=int,
        metavar="N",
        help="Bootstrap resamples of the test patients per trial, for the 95%% intervals "
        "(default 2000).",
    )
    export.add_argument(
        "--seed",
        type=int,
        default=0,
        help="Seed of the patient bootstrap, so that an export is reproducible (default 0).",
    )
    export.set_defaults(handler=_export)

    dashboard = subparsers.add_parser(
        "dashboard",
        parents=[common],
        help="Serve optuna-dashboard for a storage, with its studies' artifacts.",
    )
    add_storage_option(dashboard)
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1)."
    )
    dashboard.add_argument(
        "--port", type=int, default=8080, help="Port to listen on (default 8080)."
    )
    dashboard.add_argument(
        "--artifacts",
        metavar="DIR",
        help="This machine's artifacts folder, if not the one the studies recorded.",
    )
    dashboard.set_defaults(handler=_dashboard)


def _export(args: argparse.Namespace) -> int:
    quiet_optuna()
    from storage import open_storage
    from study.grid import load_grid_study
    from study.results import Review, collect, render, write_export
    from study.results._bootstrap import RESAMPLES
    from trainer import InputError

    if args.resamples is not None and args.resamples < 1:
        raise InputError(f"--resamples must be at least 1; got {args.resamples}; e.g. 2000")
    if args.seed < 0:
        raise InputError(f"--seed must be 0 or more; got {args.seed}; e.g. --seed 0")
    url = storage_url(args.storage)
    study = load_grid_study(open_storage(url, existing=True), args.study)
    resamples = RESAMPLES if args.resamples is None else args.resamples
    review = Review(resamples=resamples, seed=args.seed, artifacts=args.artifacts)
    results = collect(study, review)
    notes = list(results.notes)
    if args.out is None:
        sys.stdout.write(render(results, args.format))
    else:
        written, figure_notes = write_export(results, args.out)
        notes += figure_notes
        for path in written:
            print(path)
    # After the output: a refused --out ends in its one error line, with nothing said before.
    if results.missing:
        print(
            f"lrstudy: {results.complete} of {results.cells} cells complete; missing: "
            + ", ".join(f"{m['cell']} ({m['state']})" for m in results.missing),
            file=sys.stderr,
        )
    for note in notes:
        print(f"lrstudy: note: {note}", file=sys.stderr)
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    quiet_optuna()
    from storage import open_storage
    from study.results import serve

    storage = open_storage(storage_url(args.storage), existing=True)
    serve(storage, host=args.host, port=args.port, artifacts=args.artifacts)
    return 0
