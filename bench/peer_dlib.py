"""MaskGate beside its dlib peer (face_recognition: HOG detector + dlib's 128-d ResNet), in one
run, on the same frames:

    python -m bench.peer_dlib [--source DIR] [--frames 300] [--rounds 3] [--threads N] [--json]

The peer lives in a venv of its own (default ~/.cache/maskgate/peer-dlib, made on first use):
`dlib-bin` (a prebuilt dlib, no compiler needed), `face_recognition_models`, and
`face_recognition --no-deps` (its other dependency, `dlib`, would compile from source).
Each round runs bench/peer_dlib_worker.py there and `python -m edge bench --json` here, in
alternating order (peer first in odd rounds), so a drift of a shared machine hits both alike.
Both time detect → embed → match 1:1,000 per frame with one usable face, decode apart;
`--threads N` pins both processes to N cores (`--threads 1`: a stand-in for a Pi core).

Printed: each round's total p50/p95 per side and the peer/MaskGate ratio, the median over
rounds, and CPU time per frame (less sensitive to other processes on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "peer_dlib_worker.py"
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "lfw-subset" / "Colin_Powell"
# Pinned: the versions measured. setuptools < 81 because face_recognition_models imports
# pkg_resources.
PEER_PACKAGES = (
    "dlib-bin==20.0.1.post1",
    "face_recognition_models==0.3.0",
    "numpy==2.4.6",
    "pillow==13.0.0",
    "setuptools<81",
)
PEER_NO_DEPS = ("face_recognition==1.3.0",)


class PeerError(RuntimeError):
    pass


def default_venv() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "maskgate" / "peer-dlib"


def ensure_peer(path: Path, log=print) -> Path:
    """The peer venv's python, installing it first when missing or pinned differently."""
    python = path / "bin" / "python"
    stamp = path / "maskgate-peer.txt"
    want = "\n".join((*PEER_PACKAGES, "--no-deps", *PEER_NO_DEPS)) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return python
    log(f"installing the dlib peer into {path} (about 2 minutes)")
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    for cmd in (
        [str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES],
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", *PEER_NO_DEPS],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise PeerError(f"{' '.join(cmd[3:])} failed:\n{done.stderr.strip()}")
    stamp.write_text(want)
    return python


def _json_from(cmd: list[str], what: str) -> dict[str, Any]:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise PeerError(f"{what} failed (exit {done.returncode}):\n{done.stderr.strip()[-2000:]}")
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise PeerError(f"{what} printed no JSON:\n{done.stdout[-2000:]}") from None


def run_peer(python: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [str(python), str(WORKER), "--source", str(args.source), "--frames", str(args.frames)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return _json_from(cmd, "the dlib peer")


def run_edge(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "edge", "bench", "--source", str(args.source)]
    cmd += ["--frames", str(args.frames), "--json"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return _json_from(cmd, "edge bench")


def cpu_ms_per_frame(r: dict[str, Any]) -> float | None:
    if not r.get("fps") or r.get("cpu_percent") is None:
        return None
    return round(10 * r["cpu_percent"] / r["fps"], 1)


def compare(args: argparse.Namespace, log=print) -> dict[str, Any]:
    python = ensure_peer(args.venv, log)
    rounds = []
    for i in range(args.rounds):
        order = ("peer", "edge") if i % 2 == 0 else ("edge", "peer")
        got: dict[str, dict[str, Any]] = {}
        for side in order:
            log(f"round {i + 1}/{args.rounds}: {'dlib peer' if side == 'peer' else 'edge bench'}")
            got[side] = run_peer(python, args) if side == "peer" else run_edge(args)
        e, p = got["edge"]["total"], got["peer"]["total"]
        rounds.append(
            {
                "order": list(order),
                "edge": got["edge"],
                "peer": got["peer"],
                "ratio_p50": round(p["p50_ms"] / e["p50_ms"], 2),
                "ratio_p95": round(p["p95_ms"] / e["p95_ms"], 2),
                "edge_cpu_ms_per_frame": cpu_ms_per_frame(got["edge"]),
                "peer_cpu_ms_per_frame": cpu_ms_per_frame(got["peer"]),
            }
        )

    def med(values: list[float | None]) -> float | None:
        vals = [v for v in values if v is not None]
        return round(statistics.median(vals), 2) if vals else None

    summary = {
        side: {
            "total_p50_ms": med([r[side]["total"]["p50_ms"] for r in rounds]),
            "total_p95_ms": med([r[side]["total"]["p95_ms"] for r in rounds]),
            "cpu_ms_per_frame": med([r[f"{side}_cpu_ms_per_frame"] for r in rounds]),
            "stages_p50_ms": {
                k: med([r[side]["stages"][k]["p50_ms"] for r in rounds])
                for k in rounds[0][side]["stages"]
            },
        }
        for side in ("edge", "peer")
    }
    cpu_e, cpu_p = summary["edge"]["cpu_ms_per_frame"], summary["peer"]["cpu_ms_per_frame"]
    return {
        "source": str(args.source),
        "frames": args.frames,
        "threads": args.threads,
        "rounds": rounds,
        "summary": summary,
        "ratio_p50": med([r["ratio_p50"] for r in rounds]),
        "ratio_p95": med([r["ratio_p95"] for r in rounds]),
        "ratio_cpu": round(cpu_p / cpu_e, 2) if cpu_e and cpu_p else None,
        "peer_versions": rounds[0]["peer"]["versions"],
    }


def format_report(r: dict[str, Any]) -> str:
    threads = f"{r['threads']} thread(s)" if r["threads"] else "default threads"
    lines = [
        f"{r['frames']} frames of {r['source']} per run, {threads}; total = detect → embed → "
        "match 1:1,000",
        "",
        f"{'round':<6} {'order':<12} {'MaskGate p50/p95 ms':>20} {'dlib peer p50/p95 ms':>21} "
        f"{'ratio p50':>10} {'CPU ms/frame (MaskGate / peer)':>32}",
    ]
    for i, x in enumerate(r["rounds"], 1):
        e, p = x["edge"]["total"], x["peer"]["total"]
        lines.append(
            f"{i:<6} {', '.join(x['order']):<12} {e['p50_ms']:>11.1f} / {e['p95_ms']:<6.1f} "
            f"{p['p50_ms']:>12.1f} / {p['p95_ms']:<6.1f} {x['ratio_p50']:>8.2f}× "
            f"{x['edge_cpu_ms_per_frame']:>16} / {x['peer_cpu_ms_per_frame']}"
        )
    s = r["summary"]
    lines += [
        "",
        f"median over {len(r['rounds'])} rounds: MaskGate {s['edge']['total_p50_ms']} ms, "
        f"dlib peer {s['peer']['total_p50_ms']} ms (p50): {r['ratio_p50']}× "
        f"(p95: {r['ratio_p95']}×); CPU per frame {s['edge']['cpu_ms_per_frame']} vs "
        f"{s['peer']['cpu_ms_per_frame']} ms: {r['ratio_cpu']}×",
        "stages p50 ms, MaskGate: "
        + ", ".join(f"{k} {v}" for k, v in s["edge"]["stages_p50_ms"].items()),
        "stages p50 ms, dlib peer: "
        + ", ".join(f"{k} {v}" for k, v in s["peer"]["stages_p50_ms"].items()),
        "peer: " + ", ".join(f"{k} {v}" for k, v in r["peer_versions"].items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder of images")
    ap.add_argument("--frames", type=int, default=300, help="frames per run (folders loop)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each side, alternating")
    ap.add_argument("--threads", type=int, default=None, help="pin both sides to N cores")
    ap.add_argument("--venv", type=Path, default=default_venv(), help="the peer's venv")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    if not args.source.is_dir():
        ap.error(f"--source {args.source}: not a folder of images")
    if args.frames < 1 or args.rounds < 1:
        ap.error("--frames and --rounds must be at least 1")
    try:
        report = compare(args, log=lambda m: print(m, file=sys.stderr, flush=True))
    except PeerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
