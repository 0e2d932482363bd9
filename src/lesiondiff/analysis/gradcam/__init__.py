"""Grad-CAM of chosen layers at chosen steps of one sampling trajectory.

After PGDiffSeg (Feng et al., arXiv preprint 2024, sec. 5.1-5.3 and Figs. 6, 7, 8, 13): where in the image
each layer looks, and how that moves as the reverse process runs from t near T to t near 0. Works for any
registered architecture: layers are named as in ``model.named_modules()``.

Protocol (``gradcam_analysis``), for one image at the network size, EMA weights, eval mode:
1. One trajectory: the scheduler-based reverse process (DDIM by default, "trailing" timesteps, ``steps``
   network evaluations) from seeded noise, exactly as ``lesiondiff predict`` samples one mask, keeping x_t and
   the network output at every step. The final sample x_0 mapped to [0,1] is the final prediction; R is where
   it is >= the threshold (as the mask ``predict`` writes). An empty R is replaced by the whole image, and the
   outputs say so.
2. At the chosen steps (default 6, evenly spaced from the first step to the last), Grad-CAM
   (``monai.visualize.GradCAM``; Selvaraju et al. 2017) of every chosen layer for the target
   "sum over R of the x0 probability predicted at that step": sigmoid(x0 logits) where the output has them,
   else (x0_hat + 1) / 2 with x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t), not clipped, so every
   pixel of R passes a gradient (Grad-CAM is unchanged by the positive factor 1 / (2 sqrt(abar_t))). The
   network runs its full forward (``encode`` included), so image-only layers get gradients too. One forward and
   one backward pass per step serve all layers.
3. Each map is the ReLU of the gradient-weighted channel sum, bilinearly upsampled to the network size, then
   divided by its own maximum (in [0,1]; the raw maximum is kept as ``peak``). Per layer and step the
   summary gives the share of the map's mass inside R (``mass_in_region``; None when R is the whole image)
   and ``peak``.
4. The prior view (Fig. 8): Grad-CAM of one layer for an auxiliary classification logit ``aux[<key>]``
   ([B,1], e.g. PGDiffSeg's "is there a tumour" logit) at one step (the last chosen one).

Layers come from ``--layers`` or from an optional ``cam_layers`` dict on the model class:
``{"condition": [...], "denoising": [...], "psa": [[before, after], ...], "prior": name, "prior_target": key}``
(any key may be missing; list-valued keys other than "psa" become row groups of the grid, in order).

Outputs (``write_gradcam``): gradcam_grid.png (Fig. 6: rows layers, columns t from T down to 0, plus the image
with the final prediction), psa.png (Fig. 7, with before/after pairs), prior.png (Fig. 8, with a prior layer
and target), trajectory.png (Fig. 13: x_t, the x0 probability and the final mask), gradcam.json and gradcam.md.

One job per module: ``layers`` (which layers, and whether Grad-CAM can use them), ``trajectory`` (the reverse
process and the steps to explain), ``cam`` (the Grad-CAM target and maps through MONAI), ``study`` (the protocol
above, ``gradcam_analysis``), ``summary`` (gradcam.json and gradcam.md), ``run`` (a run and an image in, the
files out: ``write_gradcam``, what ``lesiondiff analyze gradcam`` calls). The figures are drawn by
``render.gradcam_figures``.
"""
