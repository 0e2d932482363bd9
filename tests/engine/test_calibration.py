"""lesiondiff calibrate end to end on a tiny ensemble: bad requests are one error line and write nothing; a
calibrated run marks each image accept or review, only for the settings it was calibrated with; evaluate, the
report and evaluate --masks --scores report what the marks and the scores give."""

import csv
import json

import pytest

from lesiondiff.cli import main
from lesiondiff.engine.calibration import FILE, mark


@pytest.fixture(scope="module")
def ensemble(train_tiny_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    runs = [train_tiny_run("unet", root / f"u{k}", 3, f"train.seed={k}") for k in range(2)]
    assert main(["ensemble", "--out", str(root / "ens"), *map(str, runs)]) == 0
    return root / "ens", runs


def refused(capsys, *args):
    code = main(["calibrate", *map(str, args)])
    err = capsys.readouterr().err
    return code == 2 and err.count("\n") == 1 and err.startswith("error: "), err


@pytest.mark.parametrize("args, says", [
    (["--split", "train", "--target-dice", "1.5"], "--target-dice must be between 0 and 1, got 1.5"),
    (["--split", "train", "--delta", "0"], "--delta must be between 0 and 1"),
    (["--split", "test"], "never on test"),
    (["--split", "val"], "has 6 images; calibrate needs at least 20"),
    (["--split", "train", "--score", "dice"], "--score 'dice': unknown"),
])
def test_bad_requests_are_one_line_and_write_nothing(ensemble, phantom_manifest, capsys, args, says):
    ens, _ = ensemble
    before = sorted(p.name for p in ens.iterdir())
    ok, err = refused(capsys, "--run", ens, "--manifest", phantom_manifest, *args)
    assert ok and says in err, err
    assert sorted(p.name for p in ens.iterdir()) == before


def test_a_score_the_run_cannot_produce_is_refused_before_predicting(ensemble, phantom_manifest, capsys):
    _, runs = ensemble
    ok, err = refused(capsys, "--run", runs[0], "--manifest", phantom_manifest, "--split", "train",
                      "--score", "agreement")
    assert ok and "one distinct member, and agreement needs two or more" in err
    assert not (runs[0] / FILE).exists() and not (runs[0] / "calibration_train").exists()


def test_calibrated_predictions_are_marked_and_evaluated(ensemble, phantom_manifest, tmp_path, capsys):
    ens, _ = ensemble
    base = ["--manifest", str(phantom_manifest)]
    assert main(["calibrate", "--run", str(ens), *base, "--split", "train", "--target-dice", "0.3",
                 "--delta", "0.2"]) == 0
    record = json.loads((ens / FILE).read_text())
    assert record["score"] == "agreement" and record["n"] == 28 and record["split"] == "train"
    assert record["settings"]["sample.samples"] == 2 and "Waudby-Smith" in record["method"]
    out = tmp_path / "pred"
    assert main(["predict", "--run", str(ens), *base, "--split", "test", "--out", str(out)]) == 0
    with (out / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["review"] for r in rows} <= {"accept", "review"}
    assert [r["review"] for r in rows] == [mark(record, {"agreement": float(r["agreement"])}) for r in rows]
    assert main(["evaluate", "--pred", str(out), *base, "--split", "test"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    accepted = [r["id"] for r in rows if r["review"] == "accept"]
    assert summary["selective"]["accepted"] == len(accepted)
    assert summary["selective"]["coverage"] == pytest.approx(len(accepted) / len(rows))
    assert summary["selective"]["target_dice"] == 0.3
    fd = summary["failure_detection"]
    assert set(fd["scores"]) == {"agreement", "lesion_fraction", "entropy", "band_entropy"}
    assert fd["optimal_aurc"] <= min(v["aurc"] for v in fd["scores"].values())
    assert 0 <= summary["pixel_uncertainty"]["ueo"] <= 1 and (out / "risk_coverage.png").is_file()
    assert main(["report", "--run", str(ens), "--pred", str(out), *base, "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    assert "Which masks to trust" in page and "figures/risk_coverage.png" in page and "Sent to review" in page
    # other sampling settings: no mark, and a note saying why
    capsys.readouterr()
    assert main(["predict", "--run", str(ens), *base, "--split", "test", "--samples", "4",
                 "--out", str(tmp_path / "other")]) == 0
    assert "calibrated on predictions made with other settings (sample.samples 2 -> 4)" in capsys.readouterr().out
    with (tmp_path / "other" / "predictions.csv").open() as f:
        assert "review" not in next(csv.DictReader(f))


def test_evaluate_masks_ranks_masks_by_a_score_file(ensemble, phantom_manifest, tmp_path, capsys):
    ens, _ = ensemble
    out = tmp_path / "pred"
    assert main(["predict", "--run", str(ens), "--manifest", str(phantom_manifest), "--split", "test",
                 "--out", str(out), "--no-postprocess"]) == 0
    assert main(["evaluate", "--pred", str(out), "--manifest", str(phantom_manifest)]) == 0
    own = json.loads((out / "summary.json").read_text())["failure_detection"]["scores"]["agreement"]
    masks = tmp_path / "masks"
    masks.mkdir()
    scores = tmp_path / "scores.csv"
    with (out / "predictions.csv").open() as f, scores.open("w", newline="") as g:
        writer = csv.writer(g)
        writer.writerow(["id", "agreement"])
        for r in csv.DictReader(f):
            (masks / r["mask"]).write_bytes((out / r["mask"]).read_bytes())
            writer.writerow([r["id"], r["agreement"]])
    assert main(["evaluate", "--masks", str(masks), "--manifest", str(phantom_manifest), "--scores",
                 str(scores)]) == 0
    given = json.loads((masks / "lesiondiff-evaluation" / "summary.json").read_text())
    assert given["failure_detection"]["scores"]["agreement"]["aurc"] == pytest.approx(own["aurc"])
    scores.write_text("id,dice\na,1\n")
    capsys.readouterr()
    assert main(["evaluate", "--masks", str(masks), "--manifest", str(phantom_manifest), "--scores",
                 str(scores), "--out", str(tmp_path / "ev2")]) == 2
    assert "needs an id column and at least one score column" in capsys.readouterr().err


def test_calibrate_never_writes_through_a_link_in_the_run_folder(ensemble, phantom_manifest, tmp_path):
    """A selective.json that is a link to a file elsewhere is replaced as a name inside the run folder; the file it
    pointed at keeps its bytes."""
    ens, _ = ensemble
    victim = tmp_path / "victim.json"
    victim.write_bytes(b"the user's own file\n")
    (ens / FILE).unlink(missing_ok=True)
    (ens / FILE).symlink_to(victim)
    assert main(["calibrate", "--run", str(ens), "--manifest", str(phantom_manifest), "--split", "train",
                 "--target-dice", "0.3", "--delta", "0.2"]) == 0
    assert victim.read_bytes() == b"the user's own file\n"
    assert not (ens / FILE).is_symlink() and json.loads((ens / FILE).read_text())["score"] == "agreement"
