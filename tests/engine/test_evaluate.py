"""The Evaluator's calibration and sampling-rounds sections, and their report figures, on small hand-made
prediction folders (no training involved)."""

import csv
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from lesiondiff.data.io import write_mask_png, write_png
from lesiondiff.data.manifest import Manifest
from lesiondiff.diffusion.samplers import INDEPENDENT_SAMPLES
from lesiondiff.engine.evaluate import evaluate
from lesiondiff.engine.predict import Prediction, Predictor
from lesiondiff.errors import LesiondiffError
from lesiondiff.fusion import majority
from lesiondiff.metrics import binary_metrics
from lesiondiff.render.tables import (
    SPREAD_ROW,
    format_outputs_markdown,
    format_rounds_markdown,
    format_table,
    rounds_table,
    samples_are,
)
from lesiondiff.reporting.report import write_report
from lesiondiff.reporting.run_figures import rounds_figure
from lesiondiff.uncertainty import expected_calibration_error
from tiny_settings import file_writer


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory):
    """Three test images of different sizes, S = 3 samples each stored at the original size (no resizing),
    so every pixel's probability is known exactly. Returns (pred_dir, manifest, coherence maps, masks)."""
    root = tmp_path_factory.mktemp("handmade")
    pred = root / "pred"
    pred.mkdir()
    rng = np.random.default_rng(0)
    rows, preds, cohs, gts = [], [], [], []
    for k, (h, w) in enumerate([(6, 8), (5, 5), (7, 4)]):
        id_ = f"img{k}"
        gt = rng.random((h, w)) < 0.4
        samples = rng.random((3, h, w)).astype(np.float16)  # probabilities, exact in float16
        coh = samples.astype(np.float32).mean(0)
        write_png(root / f"{id_}.png", (rng.random((h, w)) * 255).astype(np.uint8))
        write_mask_png(root / f"{id_}_mask.png", gt)
        write_mask_png(pred / f"{id_}_mask.png", coh >= 0.5)
        np.savez(pred / f"{id_}_probs.npz", samples=samples, fused=coh, coherence=coh,
                 original_size=np.array([h, w]), threshold=np.array(0.5))
        rows.append({"id": id_, "image": str(root / f"{id_}.png"), "masks": [str(root / f"{id_}_mask.png")],
                     "label": "", "split": "test"})
        preds.append({"id": id_, "image": str(root / f"{id_}.png"), "mask": f"{id_}_mask.png",
                      "probs": f"{id_}_probs.npz", "overlay": "", "maps": ""})
        cohs.append(coh)
        gts.append(gt)
    manifest = root / "manifest.csv"
    Manifest.from_records(rows).write(manifest)
    with (pred / "predictions.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(preds[0]))
        writer.writeheader()
        writer.writerows(preds)
    (pred / "predict.json").write_text(json.dumps({"samples": 3, "threshold": 0.5}))
    return pred, manifest, cohs, gts


def test_calibration_section_per_image_and_pooled(hand_made, tmp_path):
    pred, manifest, cohs, gts = hand_made
    summary = evaluate(pred, manifest, "test", out=tmp_path / "ev")
    c = summary["calibration"]
    per_image = [expected_calibration_error(p, g) for p, g in zip(cohs, gts)]
    assert c["ece_per_image"]["mean"] == pytest.approx(np.mean(per_image))
    assert c["ece_per_image"]["std"] == pytest.approx(np.std(per_image))
    assert c["ece_per_image"]["n"] == 3
    # kept where report.py and older readers look for it
    assert summary["uncertainty"]["ece"]["mean"] == pytest.approx(np.mean(per_image))
    # pooled: one ECE over every pixel of the split, not a mean of the per-image figures
    pooled = expected_calibration_error(np.concatenate([p.ravel() for p in cohs]),
                                        np.concatenate([g.ravel() for g in gts]))
    assert c["ece_pooled"] == pytest.approx(pooled, abs=1e-12)
    assert c["ece_pooled"] != pytest.approx(np.mean(per_image))
    assert c["n_bins"] == 10 and c["probability"] == "mean of the S samples" and c["n_samples"] == 3
    assert c["n_pixels"] == sum(g.size for g in gts) == sum(b["count"] for b in c["bins"])
    assert [b["lo"] for b in c["bins"]] == pytest.approx(np.arange(10) / 10)
    for b in c["bins"]:
        if b["count"]:
            assert b["lo"] - 1e-9 <= b["mean_prob"] <= b["hi"] + 1e-9 and 0 <= b["frac_fg"] <= 1
        else:
            assert b["mean_prob"] is None and b["frac_fg"] is None
    on_disk = json.loads((tmp_path / "ev/summary.json").read_text(encoding="utf-8"))  # valid JSON: empty bins are null
    assert on_disk["calibration"]["ece_pooled"] == pytest.approx(pooled)
    figure = tmp_path / "ev/reliability.png"
    assert figure.is_file() and Image.open(figure).size[0] > 200
    line = next(x for x in format_table(summary).splitlines() if x.startswith("calibration:"))
    assert f"ECE per image {np.mean(per_image):.4f} ± {np.std(per_image):.4f}" in line
    assert f"pooled {pooled:.4f}" in line and "10 bins, mean of 3 samples" in line


def test_report_shows_reliability_diagram(hand_made, tmp_path):
    pred, manifest, _, _ = hand_made
    summary = evaluate(pred, manifest, "test", out=tmp_path / "ev")
    page = write_report(tmp_path / "report", summary=summary).read_text(encoding="utf-8")
    assert 'src="figures/reliability.png"' in page and (tmp_path / "report/figures/reliability.png").is_file()
    assert f"{summary['calibration']['ece_pooled']:.4f}" in page
    # a summary from before the calibration section still renders, without the diagram
    old = {k: v for k, v in summary.items() if k != "calibration"}
    page = write_report(tmp_path / "old", summary=old).read_text(encoding="utf-8")
    assert "reliability.png" not in page and "ECE per image" in page


def _box(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((8, 8), bool)
    mask[rows, cols] = True
    return mask


# Two 8x8 test images with a 16-pixel lesion; per image, three rounds with known scores:
# round 1 = the ground truth, round 2 = empty, round 3 = half the lesion (a) or the lesion plus 8 false
# positives (b). The majority vote is then the half lesion (a) and the lesion (b).
GT = {"a": _box(slice(2, 6), slice(2, 6)), "b": _box(slice(1, 5), slice(3, 7))}
ROUNDS = {"a": [GT["a"], np.zeros((8, 8), bool), _box(slice(2, 6), slice(2, 4))],
          "b": [GT["b"], np.zeros((8, 8), bool), GT["b"] | _box(slice(6, 8), slice(0, 4))]}
FUSED = {"a": ROUNDS["a"][2], "b": GT["b"]}


def _rounds_predictions(root, n_samples: int = 3):
    """A predictions folder written by the Predictor's own writer (so the files are exactly what ``lesiondiff
    predict`` writes) from the rounds above, the first ``n_samples`` of them, at the original size. A third
    image, "c", has an empty ground truth and is in split "val". Returns (pred_dir, manifest)."""
    pred = root / "pred"
    pred.mkdir(parents=True)
    writer = file_writer()
    masks = {**ROUNDS, "c": [np.zeros((8, 8), bool)] * 3}
    rows, preds = [], []
    for id_, rounds in masks.items():
        image = np.full((8, 8, 1), 90 + 40 * GT.get(id_, np.zeros((8, 8), bool))[..., None], np.uint8)
        write_png(root / f"{id_}.png", image)
        write_mask_png(root / f"{id_}_gt.png", GT.get(id_, np.zeros((8, 8), bool)))
        probs = np.stack(rounds[:n_samples]).astype(np.float32)
        row = Predictor.write(writer, Prediction(id_, probs, majority(probs), (8, 8), image), pred)
        preds.append({**row, "image": str(root / f"{id_}.png")})
        rows.append({"id": id_, "image": str(root / f"{id_}.png"), "masks": [str(root / f"{id_}_gt.png")],
                     "label": "", "split": "val" if id_ == "c" else "test"})
    manifest = root / "manifest.csv"
    Manifest.from_records(rows).write(manifest)
    with (pred / "predictions.csv").open("w", newline="") as f:
        writer_ = csv.DictWriter(f, fieldnames=["id", "image", "mask", "probs", "overlay", "maps"])
        writer_.writeheader()
        writer_.writerows(preds)
    (pred / "predict.json").write_text(json.dumps({
        "sampler": "ddpm", "steps": 1000, "samples": n_samples, "fusion": "majority", "crf": False,
        "threshold": 0.5, "seed": 7, "samples_are": INDEPENDENT_SAMPLES}))
    return pred, manifest


@pytest.fixture(scope="module")
def rounds_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rounds")
    pred, manifest = _rounds_predictions(root)
    return pred, manifest, evaluate(pred, manifest, "test", out=root / "ev"), root / "ev"


def test_rounds_means_spread_and_ensemble_minus_best(rounds_run):
    _, _, summary, _ = rounds_run
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    means = {k: [r["all"][k]["mean"] for r in rounds] for k in ("accuracy", "precision", "dice", "iou")}
    assert means["dice"] == pytest.approx([1, 0, (2 / 3 + 0.8) / 2])  # round 3: half lesion 2/3, extra FP 0.8
    assert means["iou"] == pytest.approx([1, 0, (1 / 2 + 2 / 3) / 2])
    assert means["precision"] == pytest.approx([1, 0, (1 + 2 / 3) / 2])  # empty prediction, lesion present: 0
    assert means["accuracy"] == pytest.approx([1, 48 / 64, 56 / 64])
    assert rounds[2]["all"]["dice"]["std"] == pytest.approx((0.8 - 2 / 3) / 2)
    assert rounds[1]["all"]["hd95"]["n_nan"] == 2  # empty rounds: no distance to nothing
    fused = summary["fused"]["all"]
    assert fused["dice"]["mean"] == pytest.approx((2 / 3 + 1) / 2)
    # rounds are the per-sample rows regrouped: together they are the single_sample view
    assert np.mean(means["dice"]) == pytest.approx(summary["single_sample"]["all"]["dice"]["mean"])

    spread = summary["rounds_spread"]
    assert spread["accuracy"] == pytest.approx({"min": 0.75, "max": 1.0, "range": 0.25, "best_round": 1})
    assert spread["dice"]["range"] == pytest.approx(1.0) and spread["dice"]["best_round"] == 1
    assert spread["hd95"]["best_round"] == 1 and spread["hd95"]["min"] == 0.0  # lower is better; nan round out
    gain = summary["ensemble_minus_best_round"]
    assert gain["dice"] == pytest.approx((2 / 3 + 1) / 2 - 1)
    assert gain["iou"] == pytest.approx(-0.25) and gain["precision"] == pytest.approx(0.0)
    assert gain["accuracy"] == pytest.approx(0.9375 - 1)
    hd_a = binary_metrics(FUSED["a"], GT["a"])["hd95"]
    assert gain["hd95"] == pytest.approx(hd_a / 2 - 0.0)  # fused minus the lowest round mean (round 1: 0)


def test_rounds_table_markdown_and_printed_table(rounds_run):
    _, _, summary, out = rounds_run
    rows = rounds_table(summary)
    assert [r["which"] for r in rows] == ["round 1", "round 2", "round 3", "majority vote", SPREAD_ROW]
    assert rows[2]["dice"] == pytest.approx(100 * 11 / 15) and rows[2]["dice_std"] == pytest.approx(100 / 15)
    assert rows[4]["accuracy"] == pytest.approx(25.0) and rows[4]["accuracy_std"] is None
    md = format_rounds_markdown(summary)
    lines = md.splitlines()
    assert lines[0] == "| | ACC % | Precision % | Dice % | IoU % |"
    assert lines[2:7] == [
        "| round 1 | 100.00 ± 0.00 | 100.00 ± 0.00 | 100.00 ± 0.00 | 100.00 ± 0.00 |",
        "| round 2 | 75.00 ± 0.00 | 0.00 ± 0.00 | 0.00 ± 0.00 | 0.00 ± 0.00 |",
        "| round 3 | 87.50 ± 0.00 | 83.33 ± 16.67 | 73.33 ± 6.67 | 58.33 ± 8.33 |",
        "| majority vote | 93.75 ± 6.25 | 100.00 ± 0.00 | 83.33 ± 16.67 | 75.00 ± 25.00 |",
        f"| {SPREAD_ROW} | 25.00 | 100.00 | 100.00 | 100.00 |",
    ]
    assert "Dice -16.67 (best: round 1)" in md
    assert "2 images" in md and "threshold 0.5" in md and "sampler ddpm, steps 1000, seed 7" in md
    outputs = format_outputs_markdown(summary)
    assert (out / "rounds.md").read_text(encoding="utf-8") == md + "\n\n" + outputs + "\n"
    rows = outputs.splitlines()
    assert rows[0] == "| | Dice % | Precision % | Recall % | IoU (Jaccard) % |"
    # each sample alone = the mean over the three rounds' Dice (1, 0, 11/15); fused = majority vote (2/3 + 1)/2
    assert rows[2].startswith(f"| each sample alone (S = 3 per image) | {100 * (1 + 11 / 15) / 3:.2f} ± ")
    assert rows[3].startswith("| mean of the samples, >= 0.5 | ")
    assert rows[4].startswith(f"| majority vote | {100 * (2 / 3 + 1) / 2:.2f} ± ")
    assert "samples: independent draws, each from its own noise" in outputs
    assert samples_are({}).startswith("not recorded: independent draws for every sampler except class_difference")

    table = format_table(summary).splitlines()
    assert sum(x.startswith("round ") for x in table) == 3
    spread = next(x for x in table if x.startswith("spread (max - min)"))
    gain = next(x for x in table if x.startswith("fused - best round"))
    # columns: dice, iou, accuracy, precision, ...
    assert [float(v) for v in spread[26:].split()[:4]] == pytest.approx([1, 1, 0.25, 1])
    assert [float(v) for v in gain[26:].split()[:4]] == pytest.approx([-1 / 6, -0.25, -0.0625, 0], abs=1e-3)
    assert any(x.startswith("fused = the S samples fused by majority vote") for x in table)
    # a summary from before the rounds section still prints, without them
    old = {k: v for k, v in summary.items() if k not in ("rounds", "rounds_spread", "ensemble_minus_best_round")}
    assert not any(x.startswith("round ") for x in format_table(old).splitlines())


def test_rounds_figure_panels_and_dice(rounds_run, tmp_path):
    pred, manifest, _, _ = rounds_run
    rows = Manifest.read(manifest).rows()  # every split: "c" has a prediction but an empty ground truth
    records = rounds_figure(pred, rows, tmp_path / "rounds3.png", n=4)
    assert [r["id"] for r in records] == ["a", "b"]  # only the images with a lesion
    assert records[0]["rounds"] == pytest.approx([1, 0, 2 / 3]) and records[0]["fused"] == pytest.approx(2 / 3)
    assert records[1]["rounds"] == pytest.approx([1, 0, 0.8]) and records[1]["fused"] == pytest.approx(1)
    assert [r["id"] for r in rounds_figure(pred, rows, tmp_path / "one.png", n=1)] == ["a"]
    two, _ = _rounds_predictions(tmp_path / "s2", n_samples=2)
    assert len(rounds_figure(two, rows, tmp_path / "rounds2.png")[0]["rounds"]) == 2
    wide, narrow = Image.open(tmp_path / "rounds3.png"), Image.open(tmp_path / "rounds2.png")
    assert wide.format == narrow.format == "PNG"
    assert wide.size[0] > narrow.size[0] + 100  # one panel more per row (S + 2 panels)
    one, _ = _rounds_predictions(tmp_path / "s1", n_samples=1)
    assert rounds_figure(one, rows, tmp_path / "none.png") == [] and not (tmp_path / "none.png").exists()


def test_report_shows_rounds_table_and_figure(rounds_run, tmp_path):
    pred, manifest, summary, _ = rounds_run
    page = write_report(tmp_path / "report", pred_dir=pred, summary=summary, manifest=manifest).read_text(encoding="utf-8")
    assert "<h2>Sampling rounds and the fused mask</h2>" in page and 'src="figures/rounds.png"' in page
    assert Image.open(tmp_path / "report/figures/rounds.png").format == "PNG"
    assert "<h3>Sampling rounds</h3>" in page and "<td>73.33 ± 6.67</td>" in page
    assert "<th>majority vote</th>" in page
    # the Table-1 form: each sample alone (Dice over the three rounds: 1, 0, 11/15), their mean, the fused mask
    assert "<h3>Samples alone, their mean, and the fused mask</h3>" in page
    assert f"<th>each sample alone (S = 3 per image)</th><td>{100 * (1 + 11 / 15) / 3:.2f} ± " in page
    assert "samples: independent draws, each from its own noise" in page
    assert "DiffSeg's GED" in page
    old = {k: v for k, v in summary.items() if k not in ("rounds", "rounds_spread", "ensemble_minus_best_round")}
    page = write_report(tmp_path / "old", summary=old).read_text(encoding="utf-8")
    assert "<h3>Sampling rounds</h3>" not in page


def test_report_cli_reads_an_evaluation_written_elsewhere(rounds_run, tmp_path, capsys):
    from lesiondiff.cli import main

    pred, manifest, _, ev = rounds_run
    out = tmp_path / "rep"
    assert main(["report", "--pred", str(pred), "--evaluation", str(ev), "--manifest", str(manifest),
                 "--out", str(out)]) == 0
    assert "<h3>Sampling rounds</h3>" in (out / "report.html").read_text(encoding="utf-8")
    assert main(["report", "--pred", str(pred), "--evaluation", str(tmp_path / "none"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "none/summary.json: not found" in err and len(err.splitlines()) == 1


def test_per_dataset_statistics_and_fold_selection(tmp_path):
    """Images a (dataset busi) and b (kvasir) form fold 0, c (kvasir, empty mask, empty prediction) fold 1."""
    pred, manifest = _rounds_predictions(tmp_path / "r")
    where = {"a": ("busi", "train", 0), "b": ("kvasir", "val", 0), "c": ("kvasir", "train", 1)}
    rows = [{**r, **dict(zip(("dataset", "split", "fold"), where[r["id"]]))} for r in Manifest.read(manifest).rows()]
    folds = tmp_path / "folds.csv"
    Manifest.from_records(rows).write(folds)

    summary = evaluate(pred, folds, "fold:0", out=tmp_path / "ev")
    assert summary["split"] == "fold:0" and summary["n_images"] == 2
    d = summary["datasets"]
    assert list(d) == ["busi", "kvasir"] and d["busi"]["n_images"] == d["kvasir"]["n_images"] == 1
    # busi = image a: fused = half the lesion; rounds: the lesion, empty, half the lesion
    assert d["busi"]["fused"]["dice"] == pytest.approx({"mean": 2 / 3, "std": 0.0, "n": 1, "n_nan": 0})
    assert d["busi"]["fused"]["iou"]["mean"] == pytest.approx(0.5)
    assert d["busi"]["samples"]["dice"]["mean"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert d["busi"]["samples"]["dice"]["n"] == 3
    # kvasir = image b: fused = the lesion; rounds: the lesion, empty, the lesion plus 8 false positives
    assert d["kvasir"]["fused"]["dice"]["mean"] == pytest.approx(1.0)
    assert d["kvasir"]["samples"]["dice"]["mean"] == pytest.approx((1 + 0 + 0.8) / 3)
    assert summary["fused"]["all"]["dice"]["mean"] == pytest.approx((2 / 3 + 1) / 2)
    on_disk = json.loads((tmp_path / "ev/summary.json").read_text(encoding="utf-8"))
    assert on_disk["datasets"]["busi"]["fused"]["iou"]["mean"] == pytest.approx(0.5)
    with (tmp_path / "ev/metrics.csv").open() as f:
        metrics = list(csv.DictReader(f))
    assert {(r["id"], r["dataset"]) for r in metrics} == {("a", "busi"), ("b", "kvasir")} and len(metrics) == 8

    table = format_table(summary).splitlines()
    names = [x.split("  ")[0] for x in table if x.startswith(("fused /", "single_sample /"))]
    assert names == ["fused / all", "fused / dataset busi", "fused / dataset kvasir", "single_sample / all",
                     "single_sample / dataset busi", "single_sample / dataset kvasir"]
    busi = next(x for x in table if x.startswith("fused / dataset busi"))
    assert busi.split()[4:6] == ["0.667", "±0.000"] and busi.split()[-1] == "1"

    one = evaluate(pred, folds, "fold:1", out=tmp_path / "ev1")  # image c only: empty and empty score 1
    assert one["n_images"] == 1 and list(one["datasets"]) == ["kvasir"]
    assert one["datasets"]["kvasir"]["fused"]["dice"]["mean"] == 1.0
    assert not any("dataset kvasir" in x for x in format_table(one).splitlines())  # one dataset: "all" says it
    with pytest.raises(LesiondiffError, match="no fold 2; this manifest has folds 0, 1"):
        evaluate(pred, folds, "fold:2", out=tmp_path / "ev2")
    # a manifest without dataset names has no per-dataset section
    assert "datasets" not in evaluate(pred, manifest, "test", out=tmp_path / "ev3")


def test_mean_of_samples_view_and_diffseg_ged(tmp_path):
    """Image p: samples 0.9, 0.4 and 0.4 on its 16-pixel lesion (0 elsewhere), fused by majority vote, which is
    empty (one vote of three), while their mean (0.57) is the lesion. Image q: three samples equal to its
    lesion. Hand-computed, on the samples binarised at 0.5 (p: [lesion, empty, empty]):
    GED(p) = 2 * 2/3 - 4/9 = 8/9 (d = 1 - IoU); DiffSeg's GED(p) = 4 ordered pairs with RMS difference
    sqrt(16/64) = 1/2, over 3^2 = 2/9; both 0 for q."""
    pred = tmp_path / "pred"
    pred.mkdir()
    writer = file_writer()
    gts = {"p": GT["a"], "q": GT["b"]}
    samples = {"p": np.stack([0.9 * GT["a"], 0.4 * GT["a"], 0.4 * GT["a"]]).astype(np.float32),
               "q": np.stack([GT["b"]] * 3).astype(np.float32)}
    rows, preds = [], []
    for id_, label in (("p", "benign"), ("q", "malignant")):
        image = np.full((8, 8, 1), 90, np.uint8)
        write_png(tmp_path / f"{id_}.png", image)
        write_mask_png(tmp_path / f"{id_}_gt.png", gts[id_])
        row = Predictor.write(writer, Prediction(id_, samples[id_], majority(samples[id_]), (8, 8), image), pred)
        preds.append({**row, "image": str(tmp_path / f"{id_}.png")})
        rows.append({"id": id_, "image": str(tmp_path / f"{id_}.png"), "masks": [str(tmp_path / f"{id_}_gt.png")],
                     "label": label, "split": "test"})
    Manifest.from_records(rows).write(tmp_path / "manifest.csv")
    with (pred / "predictions.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "image", "mask", "probs", "overlay", "maps"])
        w.writeheader()
        w.writerows(preds)
    (pred / "predict.json").write_text(json.dumps({"samples": 3, "fusion": "majority", "threshold": 0.5}))

    summary = evaluate(pred, tmp_path / "manifest.csv", "test", out=tmp_path / "ev")
    assert summary["fused"]["all"]["dice"] == pytest.approx({"mean": 0.5, "std": 0.5, "n": 2, "n_nan": 0})
    view = summary["mean_of_samples"]
    assert set(view) == {"all", "benign", "malignant"} and set(view["all"]) == set(summary["fused"]["all"])
    assert view["all"]["dice"] == pytest.approx({"mean": 1.0, "std": 0.0, "n": 2, "n_nan": 0})
    assert view["benign"]["iou"]["mean"] == 1.0 and view["all"]["precision"]["mean"] == 1.0
    assert summary["single_sample"]["all"]["dice"]["mean"] == pytest.approx((1 / 3 + 1) / 2)
    u = summary["uncertainty"]
    assert u["ged"]["mean"] == pytest.approx((8 / 9 + 0) / 2) and u["ged"]["std"] == pytest.approx(4 / 9)
    assert u["ged_diffseg"]["mean"] == pytest.approx((2 / 9 + 0) / 2) and u["ged_diffseg"]["std"] == pytest.approx(1 / 9)
    on_disk = json.loads((tmp_path / "ev/summary.json").read_text(encoding="utf-8"))
    assert on_disk["mean_of_samples"]["all"]["dice"]["mean"] == 1.0 and "ged_diffseg" in on_disk["uncertainty"]
    with (tmp_path / "ev/metrics.csv").open() as f:  # metrics.csv keeps its rows: fused and each sample
        assert {r["which"] for r in csv.DictReader(f)} == {"fused", "sample_0", "sample_1", "sample_2"}

    table = format_table(summary).splitlines()
    line = next(x for x in table if x.startswith("mean_of_samples / all"))
    assert line.split()[3:5] == ["1.000", "±0.000"]  # the first metric column, dice
    assert any(x.startswith("mean_of_samples = the per-pixel mean of the S samples") for x in table)
    ged_line = next(x for x in table if "DiffSeg GED" in x)
    assert "0.111 ±0.111" in ged_line and "no ground truth" in ged_line
    old = {k: v for k, v in summary.items() if k != "mean_of_samples"}  # summaries written before the view
    old["uncertainty"] = {k: v for k, v in u.items() if k != "ged_diffseg"}
    old_table = format_table(old).splitlines()[1:]  # after the protocol line, which names the tmp folder
    assert not any("mean_of_samples" in x or "DiffSeg GED" in x for x in old_table)


def _corrupt(path, kind: str) -> None:
    """Spoil a ``_probs.npz`` the ways a disk, a copy or an older writer can."""
    data = path.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8).tobytes())
    elif kind == "flipped byte":  # inside the compressed samples: the zip's CRC check fails
        spoilt = bytearray(data)
        spoilt[100] ^= 0xFF
        path.write_bytes(bytes(spoilt))
    elif kind == "no samples":
        np.savez(path.with_suffix(""), fused=np.zeros((8, 8), np.float32))  # np.savez adds the .npz
    elif kind == "npy":
        with path.open("wb") as f:
            np.save(f, np.zeros((3, 8, 8), np.float32))


CORRUPTIONS = {"empty": "empty file, 0 bytes", "truncated": "BadZipFile", "random bytes": "not a zip archive",
               "flipped byte": "BadZipFile: Bad CRC-32", "no samples": "no 'samples' array; it has fused",
               "npy": "a single .npy array"}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_spoilt_probability_file_is_one_error_line_naming_it(kind, tmp_path, capsys):
    from lesiondiff.cli import main

    pred, manifest = _rounds_predictions(tmp_path)
    _corrupt(pred / "b_probs.npz", kind)
    assert main(["evaluate", "--pred", str(pred), "--manifest", str(manifest), "--split", "test",
                 "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error: ") == 1 and err.endswith("\n")
    last = err.splitlines()[-1]  # after the progress bar's own line
    assert last.startswith(f"error: {pred / 'b_probs.npz'}: not a readable probability file (")
    assert CORRUPTIONS[kind] in last and last.endswith("; predict it again")


def _job_folder(pred, folder):
    """A serve job's folder whose out/ holds the predictions of ``pred``."""
    shutil.copytree(pred, folder / "job" / "out")
    return folder / "job"


def _readers() -> dict:
    """Every reader of ``_probs.npz`` files besides evaluate: name -> call(pred_dir, manifest, rows, folder)."""
    from lesiondiff.engine.postprocessing import choose_for_run
    from lesiondiff.experiments.compare import _maps
    from lesiondiff.reporting.run_figures import examples_figure
    from lesiondiff.serve.jobs import draw_samples

    return {
        "postprocess": lambda pred, manifest, rows, folder: choose_for_run(folder, manifest, "test", pred),
        "compare figure": lambda pred, manifest, rows, folder: _maps(pred, {"a": {"probs": "a_probs.npz"}}, "a",
                                                                     (8, 8)),
        "examples figure": lambda pred, manifest, rows, folder: examples_figure(pred, rows, folder / "ex.png"),
        "rounds figure": lambda pred, manifest, rows, folder: rounds_figure(pred, rows, folder / "rounds.png"),
        "serve": lambda pred, manifest, rows, folder: draw_samples(_job_folder(pred, folder), "a"),
    }


@pytest.mark.parametrize("reader", list(_readers()))
def test_every_reader_of_probability_files_refuses_a_spoilt_one(reader, tmp_path):
    from lesiondiff.data.io import FileError

    pred, manifest = _rounds_predictions(tmp_path)
    rows = Manifest.read(manifest).select("test")
    for id_ in ("a", "b", "c"):
        _corrupt(pred / f"{id_}_probs.npz", "truncated")
    with pytest.raises(FileError, match=re.escape("_probs.npz: not a readable probability file (BadZipFile")):
        _readers()[reader](pred, manifest, rows, tmp_path)
    assert not (tmp_path / "postprocess.json").exists()


def test_evaluate_and_evaluate_masks_give_identical_rows_from_one_scorer(tmp_path):
    """The same masks scored as lesiondiff predictions and as another tool's mask files: the fused rows of
    metrics.csv and the shared summary sections are the same (one per-image loop, engine/scoring.py)."""
    from lesiondiff.engine.evaluate_masks import evaluate_masks

    pred, manifest = _rounds_predictions(tmp_path)
    masks = tmp_path / "masks"
    masks.mkdir()
    for f in pred.glob("*_mask.png"):
        (masks / f.name).write_bytes(f.read_bytes())
    own = evaluate(pred, manifest, "test", out=tmp_path / "own")
    given = evaluate_masks(masks, manifest, "test", out=tmp_path / "given")

    def fused_rows(folder):
        with (folder / "metrics.csv").open() as f:
            return [{k: v for k, v in r.items() if k != "file"} for r in csv.DictReader(f) if r["which"] == "fused"]

    assert fused_rows(tmp_path / "own") == fused_rows(tmp_path / "given") and len(fused_rows(tmp_path / "own")) == 2
    for section in ("fused", "pooled", "lesion_images", "image_level", "n_images", "split"):
        assert json.dumps(own[section]) == json.dumps(given[section]), section  # (nan == nan as text)
