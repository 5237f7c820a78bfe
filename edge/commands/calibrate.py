"""calibrate: choose the masked and unmasked thresholds for a FAR that holds on new people."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from edge.calibrate import calibrate_samples
from edge.commands.common import CommandError, config_from, embed_samples, open_pipeline, print_json
from edge.enroll import variants_from_config
from edge.evaluate import load_dataset


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="choose match thresholds for a target FAR on people not seen",
        description="Embeds the datasets with the configured pipeline, then for masked probes "
        "(masked-vs-unmasked pairs) and unmasked faces (unmasked pairs) picks the threshold whose "
        "FAR stays at or below --far for new people: the --confidence quantile of thresholds over "
        "a bootstrap of identities, checked by k-fold cross-validation by identity.",
    )
    p.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="dataset folder (repeat to pool several, e.g. mfr2-dev and lfw-subset)",
    )
    p.add_argument(
        "--far", type=float, default=1e-3, help="target false-accept rate (default 1e-3)"
    )
    p.add_argument("--confidence", type=float, default=0.95, help="bootstrap quantile (margin)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds by identity")
    p.add_argument("--write", action="store_true", help="write the thresholds into the config file")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument(
        "--no-variants", action="store_true", help="without enrollment's synthetic masked templates"
    )
    p.set_defaults(run=run)


def _write_thresholds(path: Path, masked: float, unmasked: float) -> None:
    """Replace the two threshold values in place, keeping the file's comments and layout."""
    text = path.read_text(encoding="utf-8")
    for key, value in (("threshold_masked", masked), ("threshold_unmasked", unmasked)):
        text, n = re.subn(rf"(^\s*{key}:\s*)[-0-9.eE+]+", rf"\g<1>{value:.4f}", text, flags=re.M)
        if n != 1:
            raise CommandError(f"{path}: expected one '{key}:' line to update, found {n}")
    path.write_text(text, encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    if not 0 < args.far < 1:
        raise CommandError(f"--far must be between 0 and 1, got {args.far}")
    cfg = config_from(args)
    samples = []
    try:
        for d in args.data:
            samples += load_dataset(d)
    except ValueError as err:
        raise CommandError(str(err)) from None
    with open_pipeline(cfg) as pipe:
        variants = [] if args.no_variants else variants_from_config(cfg.enroll)
        emb, _, extra = embed_samples(pipe, samples, variants=variants)
        model = pipe.model_id
    kw = {"confidence": args.confidence, "folds": args.folds, "extra": extra}
    try:
        masked = calibrate_samples(samples, emb, "masked-vs-unmasked", args.far, **kw)
        unmasked = calibrate_samples(samples, emb, "unmasked", args.far, **kw)
    except ValueError as err:
        raise CommandError(str(err)) from None
    report = {
        "model": model,
        "data": [str(d) for d in args.data],
        "target_far": args.far,
        "threshold_masked": masked["threshold"],
        "threshold_unmasked": unmasked["threshold"],
        "masked": masked,
        "unmasked": unmasked,
    }
    if args.json:
        print_json(report)
    else:
        for name, r in (("masked", masked), ("unmasked", unmasked)):
            ch = r["choose"]
            print(
                f"{name}: threshold {r['threshold']:.4f} (empirical quantile "
                f"{ch['empirical_threshold']:.4f}; {ch['identities']} identities, "
                f"{ch['impostor_pairs']} impostor / {ch['genuine_pairs']} genuine pairs)"
            )
            cv = r.get("cross_validation")
            if cv:
                b, e = cv["bootstrap"], cv["empirical"]
                print(
                    f"  cross-validated by identity ({cv['folds']} folds × {cv['repeats']}): "
                    f"FAR {b['far']:.5f} (×{b['far_ratio_to_target']:.2f} target), "
                    f"TAR {b['tar']:.4f}; plain quantile would give FAR {e['far']:.5f} "
                    f"(×{e['far_ratio_to_target']:.2f})"
                )
            else:
                print(f"  cross-validation skipped: {r.get('cross_validation_skipped')}")
    if args.write:
        path = Path(args.config) if args.config else cfg.base_dir / "config.yaml"
        _write_thresholds(path, masked["threshold"], unmasked["threshold"])
        print(f"thresholds written to {path}", file=sys.stderr)
    return 0
