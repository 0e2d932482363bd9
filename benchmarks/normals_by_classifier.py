"""Can an image-level lesion classifier decide which images are lesion-free? (docs/results/diffusion_vs_unet.md,
section 6.4: 85 % of the BUSI normal images predicted empty at a cost of at most one lesion-Dice point.)

    python benchmarks/normals_by_classifier.py --manifest busi.csv --features runs/unc_busi/unet \\
        --out runs/normals_classifier_busi \\
        --source medsegdiff-aligned=runs/unc_busi/pred/medsegdiff-aligned_test

The classifier is a linear head on frozen features: each image's bottleneck of a trained feed-forward run
(``--features``, a run whose model is the ``unet``), average- and max-pooled over space, standardised with the
training split's mean and spread. An L2-penalised logistic regression (scipy's L-BFGS) is fitted to the
training split's labels (``normal`` against any other label); the penalty is chosen from a grid by the
validation AUROC (ties to the stronger penalty). The rule "lesion-free when P(lesion) <= tau" takes the smallest
tau that empties at least --target of the validation normal images, and is applied once to the test split
of each ``--source NAME=TEST`` (an evaluated prediction folder of the test split): the normal
images then predicted empty, the lesion images it empties, and the lesion-image Dice before and after.

With ``--finetune-minutes M`` the encoder and the head (started from the frozen fit) are then trained together
on the training split's labels for M CPU minutes, and the state with the best validation AUROC is kept.

Choices not fixed by a paper: frozen features (no training beyond the run's; a few seconds of CPU), the
bottleneck as the layer (the most global features of the network), and the average and maximum as the
pooling (a lesion is a local finding). The training split's features come from a network that was trained on
those images; tau is therefore chosen on validation, never on the training split. Writes ``table.md`` and
``table.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import expit
from torch import nn

from lesiondiff.data.io import read_image
from lesiondiff.data.manifest import split_rows
from lesiondiff.data.transforms import preprocess_image
from lesiondiff.engine.evaluate import fused_metrics
from lesiondiff.engine.predict import load_run
from normals_by_score import apply_rule, rule_cells, separation_auroc, threshold_for

PENALTIES = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)  # L2 weight on the summed log-loss, standardised features


def pooled(bottleneck: torch.Tensor) -> torch.Tensor:
    """[N,C,h,w] -> [N,2C]: the spatial average, then the spatial maximum, of each channel."""
    return torch.cat([bottleneck.mean(dim=(2, 3)), bottleneck.amax(dim=(2, 3))], dim=1)


def features(model, x: torch.Tensor) -> torch.Tensor:
    """[N,C,H,W] network inputs -> [N,2C] the pooled bottleneck of a unet."""
    return pooled(model.body.encode(model.encode(x))[0])


@torch.no_grad()
def all_features(model, x: torch.Tensor, batch: int = 32) -> np.ndarray:
    """:func:`features` of every image, in batches, in evaluation mode, as float64."""
    model.eval()
    return torch.cat([features(model, x[i:i + batch]) for i in range(0, len(x), batch)]).double().numpy()


def network_inputs(cfg, paths: list[str]) -> torch.Tensor:
    """[N,C,size,size] the images at ``paths`` as the run's network reads them."""
    d = cfg.data
    return torch.stack([preprocess_image(read_image(p), d.size, d.channels, d.intensity_window) for p in paths])


def fine_tune(model, head: nn.Linear, train: tuple[torch.Tensor, np.ndarray], val: tuple[torch.Tensor, np.ndarray],
              minutes: float, lr: float = 1e-4, batch: int = 16, every: int = 20, seed: int = 0) -> dict:
    """Train the unet's encoder and ``head`` (on the raw pooled features) together with binary cross-entropy on
    the label "has a lesion" for ``minutes`` of process time (random horizontal flips; Adam), scoring the
    validation AUROC at step 0 and every ``every`` steps; the best state (ties to the earlier) is loaded back.
    Returns ``{"steps", "best_step", "val_auroc": [(step, auroc), ...]}``."""
    params = [*model.image_in.parameters(), *model.body.down.parameters(), *model.body.downsample.parameters(),
              *model.body.mid.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    y = torch.as_tensor(~train[1], dtype=torch.float32)

    def score() -> float:
        with torch.no_grad():
            return separation_auroc(head(torch.as_tensor(all_features(model, val[0])).float())[:, 0].numpy(), val[1])

    def state() -> tuple[dict, dict]:
        return ({k: v.clone() for k, v in model.state_dict().items()},
                {k: v.clone() for k, v in head.state_dict().items()})

    history = [(0, score())]
    best = (history[0][1], *state(), 0)
    start, step = time.process_time(), 0
    while time.process_time() - start < 60 * minutes:
        model.train()
        idx = torch.randint(len(y), (batch,), generator=gen)
        x = train[0][idx]
        flip = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = nn.functional.binary_cross_entropy_with_logits(head(features(model, x))[:, 0], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % every == 0:
            history.append((step, score()))
            if history[-1][1] > best[0]:
                best = (history[-1][1], *state(), step)
    model.load_state_dict(best[1])
    head.load_state_dict(best[2])
    model.eval()
    return {"steps": step, "best_step": best[3], "val_auroc": history}


def linear_head(w: np.ndarray, mean: np.ndarray, spread: np.ndarray) -> nn.Linear:
    """The logistic weights ``w`` fitted on standardised features as a Linear on the raw features."""
    head = nn.Linear(len(mean), 1)
    with torch.no_grad():
        head.weight[0] = torch.as_tensor(w[:-1] / spread)
        head.bias[0] = float(w[-1] - np.sum(w[:-1] * mean / spread))
    return head


def fit_logistic(x: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    """Weights [D+1] (bias last) minimising the summed log-loss of labels ``y`` in {0,1} given ``x`` [N,D],
    plus ``penalty`` / 2 times the squared weights (not the bias)."""
    xb = np.hstack([x, np.ones((len(x), 1))])

    def loss(w):
        z = xb @ w
        p = expit(z)
        reg = np.r_[w[:-1], 0.0]
        value = np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * penalty * reg @ reg
        return value, xb.T @ (p - y) + penalty * reg

    return minimize(loss, np.zeros(xb.shape[1]), jac=True, method="L-BFGS-B").x


def lesion_probability(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return expit(np.hstack([x, np.ones((len(x), 1))]) @ w)


def choose(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
           penalties=PENALTIES) -> tuple[float, np.ndarray, list[dict]]:
    """(penalty, weights, per-penalty validation AUROCs) of the penalty whose head separates the validation
    images best (normal low, lesion high); ties go to the stronger penalty. ``train``/``val``: (features,
    normal) with features already standardised."""
    tried = []
    for penalty in penalties:
        w = fit_logistic(train[0], (~train[1]).astype(float), penalty)
        tried.append({"penalty": penalty, "val_auroc": separation_auroc(lesion_probability(w, val[0]), val[1]),
                      "weights": w})
    best = max(tried, key=lambda t: (t["val_auroc"], t["penalty"]))
    return best["penalty"], best["weights"], [{k: t[k] for k in ("penalty", "val_auroc")} for t in tried]


def split_paths(manifest: Path, split: str) -> tuple[list[str], list[str], np.ndarray]:
    """(ids, image paths, normal) of one split of a manifest, in its order."""
    _, rows = split_rows(manifest, split, None)
    return [r["id"] for r in rows], [r["image"] for r in rows], np.array([r["label"] == "normal" for r in rows])


def gated(ids: list[str], prob: np.ndarray, normal: np.ndarray, folder: Path
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P(lesion), normal, fused Dice) per image of an evaluated prediction folder (its metrics.csv), the first
    two taken from the manifest's split (``ids`` in order) and checked against the folder's labels."""
    at = {i: k for k, i in enumerate(ids)}
    rows = fused_metrics(folder)
    missing = [r["id"] for r in rows if r["id"] not in at]
    if missing:
        raise SystemExit(f"error: {folder} predicts {missing[0]!r}, which is not in the manifest's split")
    k = [at[r["id"]] for r in rows]
    if not np.array_equal(normal[k], [r["label"] == "normal" for r in rows]):
        raise SystemExit(f"error: {folder}'s labels differ from the manifest's")
    return prob[k], normal[k], np.array([float(r["dice"]) for r in rows])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--features", required=True, type=Path, help="a trained unet run: the frozen features")
    p.add_argument("--source", action="append", required=True, metavar="NAME=TEST")
    p.add_argument("--target", type=float, default=0.85, help="share of validation normal images to empty")
    p.add_argument("--finetune-minutes", type=float, default=0.0,
                   help="CPU minutes (process time, one thread) of training the encoder with the head; 0: frozen")
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg, model = load_run(a.features)
    if cfg.model.name != "unet":
        raise SystemExit(f"error: {a.features} is a {cfg.model.name} run; the features come from a unet run")
    splits = {}
    for split in ("train", "val", "test"):
        ids, paths, normal = split_paths(a.manifest, split)
        splits[split] = (ids, network_inputs(cfg, paths), normal)
    raw = {k: all_features(model, x) for k, (_, x, _) in splits.items()}
    mean, spread = raw["train"].mean(0), raw["train"].std(0) + 1e-8
    std = {k: ((f - mean) / spread, splits[k][2]) for k, f in raw.items()}
    penalty, w, tried = choose(std["train"], std["val"])
    prob = {k: lesion_probability(w, f) for k, (f, _) in std.items()}
    head = {"penalty": penalty, "tried": tried, "train_normals": int(std["train"][1].sum()),
            "train_n": len(std["train"][1]), "fine_tuned": None}
    if a.finetune_minutes > 0:  # from the frozen head, the encoder and the head trained on the label together
        linear = linear_head(w, mean, spread).float()
        head["fine_tuned"] = {"minutes": a.finetune_minutes, **fine_tune(
            model, linear, (splits["train"][1], splits["train"][2]), (splits["val"][1], splits["val"][2]),
            a.finetune_minutes)}
        with torch.no_grad():
            prob = {k: torch.sigmoid(linear(torch.as_tensor(all_features(model, x)).float()))[:, 0].double().numpy()
                    for k, (_, x, _) in splits.items()}
    tau = threshold_for(prob["val"], std["val"][1], a.target)
    head.update({"tau": tau, **{f"{k}_auroc": separation_auroc(prob[k], std[k][1]) for k in prob}})
    rows = []
    for spec in a.source:
        name, folder = spec.split("=", 1)
        test = Path(folder)
        score, normal, dice = gated(splits["test"][0], prob["test"], std["test"][1], test)
        rows.append({"source": name, **apply_rule(score, normal, dice, tau)})
    (a.out / "table.json").write_text(json.dumps({"target": a.target, "features": str(a.features),
                                                  "head": head, "rows": rows}, indent=2))
    grid = ", ".join(f"{t['penalty']:g}: {t['val_auroc']:.3f}" for t in tried)
    tuned = head["fine_tuned"]
    how = ("frozen" if tuned is None else f"then the encoder and head trained together on the label for "
           f"{tuned['minutes']:g} CPU minutes, {tuned['steps']} steps, best validation AUROC at step {tuned['best_step']}")
    lines = [f"Head: logistic regression on the pooled bottleneck of {a.features} ({how}), fitted on the "
             f"{head['train_n']} training images ({head['train_normals']} normal), L2 penalty {penalty:g} chosen on "
             f"validation AUROC ({grid}). AUROC "
             f"normal vs lesion: train {head['train_auroc']:.3f}, val {head['val_auroc']:.3f}, test "
             f"{head['test_auroc']:.3f}. Rule: lesion-free when P(lesion) <= {tau:.3f}, the smallest value emptying "
             f"{100 * a.target:.0f} % of the validation normal images; fused masks at threshold 0.5, per-image Dice "
             "at the original size; test split once.", "",
             "| source | test normal empty: before -> after | test lesion images emptied "
             "| test lesion-image Dice: before -> after (pp) |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['source']} | {rule_cells(r)} |" for r in rows]
    (a.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
