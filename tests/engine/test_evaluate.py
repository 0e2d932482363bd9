"""The Evaluator's calibration section on a small hand-made prediction folder (no training involved)."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from lesiondiff.data.io import write_mask_png, write_png
from lesiondiff.data.manifest import Manifest
from lesiondiff.engine.evaluate import evaluate, format_table
from lesiondiff.report import write_report
from lesiondiff.uncertainty import expected_calibration_error


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
    on_disk = json.loads((tmp_path / "ev/summary.json").read_text())  # valid JSON: empty bins are null
    assert on_disk["calibration"]["ece_pooled"] == pytest.approx(pooled)
    figure = tmp_path / "ev/reliability.png"
    assert figure.is_file() and Image.open(figure).size[0] > 200
    line = next(x for x in format_table(summary).splitlines() if x.startswith("calibration:"))
    assert f"ECE per image {np.mean(per_image):.4f} ± {np.std(per_image):.4f}" in line
    assert f"pooled {pooled:.4f}" in line and "10 bins, mean of 3 samples" in line


def test_report_shows_reliability_diagram(hand_made, tmp_path):
    pred, manifest, _, _ = hand_made
    summary = evaluate(pred, manifest, "test", out=tmp_path / "ev")
    page = write_report(tmp_path / "report", summary=summary).read_text()
    assert 'src="figures/reliability.png"' in page and (tmp_path / "report/figures/reliability.png").is_file()
    assert f"{summary['calibration']['ece_pooled']:.4f}" in page
    # a summary from before the calibration section still renders, without the diagram
    old = {k: v for k, v in summary.items() if k != "calibration"}
    page = write_report(tmp_path / "old", summary=old).read_text()
    assert "reliability.png" not in page and "ECE per image" in page
