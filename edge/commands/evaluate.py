"""evaluate: verification accuracy of the configured pipeline on a labelled photo folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.commands.common import CommandError, config_from, embed_samples, open_pipeline, print_json
from edge.enroll import variants_from_config
from edge.evaluate import format_table, load_dataset, plot_roc, summarize

PROTOCOLS = ("all", "masked-vs-unmasked", "unmasked", "masked")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="ROC, EER and TAR@FAR on a folder of person folders (with manifest.csv)",
        description="Embeds every photo with the door's own pipeline, scores every pair of the "
        "protocol, and reports ROC, EER, TAR at FAR 1e-1…1e-4 and TAR/FAR at the configured "
        "thresholds. A photo whose face cannot be acquired makes its pairs rejections.",
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder")
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="all",
        help="all pairs, or masked probes against unmasked enrolment photos, …",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", type=Path, default=None, help="write the ROC curve to this PNG")
    p.add_argument(
        "--no-variants",
        action="store_true",
        help="score photos alone, without the synthetic masked templates enrollment adds",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    try:
        samples = load_dataset(args.data)
    except ValueError as err:
        raise CommandError(str(err)) from None
    with open_pipeline(cfg) as pipe:
        variants = [] if args.no_variants else variants_from_config(cfg.enroll)
        emb, masked, extra = embed_samples(pipe, samples, variants=variants)
        model = pipe.model_id
    try:
        report = summarize(
            samples,
            emb,
            masked,
            args.protocol,
            cfg.match.threshold_masked,
            cfg.match.threshold_unmasked,
            extra=extra,
        )
    except ValueError as err:
        raise CommandError(f"{args.data}: {err}") from None
    report = {
        "data": str(args.data),
        "model": model,
        "masked_variants": 0 if args.no_variants else cfg.enroll.masked_variants,
        **report,
    }
    if args.plot:
        plot_roc(report, args.plot)
        print(f"ROC written to {args.plot}", file=sys.stderr)
    if args.json:
        print_json(report)
    else:
        print(format_table(report))
    return 0
