"""The failure-detection figures of an evaluation summary: the risk-coverage curve (which masks to trust) and the
pixel ROC of the uncertainty map for the error map (``selective.py``, ``engine/evaluate.py``)."""

from __future__ import annotations

from pathlib import Path

from .figures import pyplot, save

COLOURS = {"agreement": "#d62728", "lesion_fraction": "#9467bd", "entropy": "#1f77b4", "band_entropy": "#2ca02c"}


def risk_coverage_figure(summary: dict, path: Path) -> bool:
    """Mean Dice of the accepted images against coverage, one line per score, with the optimal order and the
    random order (the split's mean Dice) beside them; the calibrated point when the predictions carry accept /
    review marks. False when the summary has no scored images."""
    fd = summary.get("failure_detection") or {}
    curves = fd.get("curves") or {}
    if not fd.get("scores"):
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    for name, curve in curves.items():
        if name == "optimal":
            continue
        s = fd["scores"][name]
        ax.plot(curve["coverage"], curve["mean_dice"], color=COLOURS.get(name, "0.4"),
                label=f"{name} (AURC {s['aurc']:.4f}, e-AURC {s['eaurc']:.4f})")
    opt = curves["optimal"]
    ax.plot(opt["coverage"], opt["mean_dice"], "--", color="0.2", label=f"optimal order (AURC {fd['optimal_aurc']:.4f})")
    ax.axhline(1 - fd["random_aurc"], linestyle=":", color="0.5",
               label=f"random order (AURC {fd['random_aurc']:.4f})")
    sel = summary.get("selective")
    if sel and sel.get("accepted_mean_dice") is not None:
        ax.plot([sel["coverage"]], [sel["accepted_mean_dice"]], "k*", markersize=11,
                label=f"calibrated: {sel['coverage']:.0%} accepted, Dice {sel['accepted_mean_dice']:.3f} "
                      f"(target {sel.get('target_dice')})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="coverage (share of images accepted, most trusted first)",
           ylabel="mean Dice of the accepted images")
    ax.set_title(f"which masks to trust, split {summary['split']}: {fd['n']} images\nrisk = 1 - fused Dice "
                 "per image; lower AURC is better", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    save(fig, path)
    return True


def pixel_roc_figure(summary: dict, path: Path) -> bool:
    """The pooled pixel ROC of the uncertainty map for the error map, with its AUROC and the best UEO."""
    px = summary.get("pixel_uncertainty")
    if not px or px.get("auroc") != px.get("auroc"):  # missing or nan (no error pixels, or no correct ones)
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot(px["roc"]["fpr"], px["roc"]["tpr"], color="#d62728", label=f"AUROC {px['auroc']:.4f}")
    ax.plot([0, 1], [0, 1], "--", color="0.5", label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="correct pixels flagged", ylabel="erroneous pixels flagged")
    ax.set_title(f"pixel uncertainty ({px['map'].split(',')[0]}) vs errors, split {summary['split']}\n"
                 f"pooled over pixels; UEO {px['ueo']:.3f} at tau {px['ueo_tau']}", fontsize=8)
    ax.legend(fontsize=8, loc="lower right")
    save(fig, path)
    return True


def compare_risk_coverage(curves: dict[str, tuple], path: Path, title: str) -> None:
    """Several sources' risk-coverage curves in one figure: name -> (coverage, selective risk) arrays, drawn as
    the mean Dice of the accepted images against coverage."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.6, 4.6))
    for name, (coverage, risk) in curves.items():
        ax.plot(coverage, 1 - risk, label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="coverage (share of images accepted, most trusted first)",
           ylabel="mean Dice of the accepted images")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    save(fig, path)
