"""`clusterloss calibrate RUN_DIR [--far R | --tar R] [--calibrate PATH]`: choose the open-set
threshold of the run's gallery again, print and save the trade-off."""

from __future__ import annotations

import argparse

from clusterloss.app.cli.evaluate import add_run_dir, locked_run
from clusterloss.app.cli.index import CALIBRATION_HELP, add_target, target


def add_parser(subparsers) -> list[argparse.ArgumentParser]:
    parser = subparsers.add_parser(
        "calibrate",
        help="choose the open-set threshold of the run's gallery; print the trade-off",
        description=f"Calibrate RUN_DIR's gallery (`clusterloss index build`): {CALIBRATION_HELP}. "
        "Prints the trade-off table (threshold, FAR, TAR, precision, recall) and writes it to "
        "RUN_DIR/index/calibration.json; the probes are kept, so enrolment recalibrates at the "
        "same target.",
    )
    add_run_dir(parser)
    add_target(parser)
    parser.set_defaults(run=run)
    return [parser]


def run(args: argparse.Namespace) -> int:
    from clusterloss.app.gallery import calibrate_gallery, open_run_gallery, write_calibration

    with locked_run(args.run_dir) as (run_dir, model, data, _):
        gallery = open_run_gallery(run_dir)
        lines = calibrate_gallery(gallery, model, data, args.calibrate, verbose=args.verbose, **target(args))
        write_calibration(run_dir, gallery)
    print(lines)
    return 0
