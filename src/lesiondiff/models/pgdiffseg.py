"""PGDiffSeg: a dual-flow denoiser with Slim Dense Blocks, Parameter-Shared cross-Attention (PSA) and a
prior-supervision branch.

PGDiffSeg, "Prior-Guided Denoising Diffusion Model with Parameter-Shared Attention for Breast Cancer
Segmentation" (Feng et al., arXiv preprint 2024; BUSI and breast DCE-MRI). The paper's equations were lost in
extraction; where this file reads them, the docstring of the part says how.

Data flow (``encode`` runs once per image, ``denoise`` at every sampling step):

    image --SDB--> condition flow --+                              +--> skips (sum of both flows per level)
                        |  PSA_i  | |  (after each of 4 down units) |
    x_t ---SDB--> denoising flow ---+--> sum + prior --> ResBlock, self-attention, ResBlock --> 4 up units
    image --prior branch (conv-BN-ReLU, 4 units of 2x conv-BN-ReLU, stride 2)--^  + classifier, aux mask

- Slim Dense Block (Eq. 1, ``SlimDenseBlock``): a 3x3 stem to C channels, then L layers; layer l receives the
  element-wise sum of all previous outputs x_0 + ... + x_{l-1} (DenseNet's connectivity with addition instead
  of concatenation, so every layer has C channels) and outputs x_l = 0.2 * H_l(sum), H_l being two blocks of
  3x3 conv, BatchNorm, LeakyReLU. The block returns x_0 + ... + x_L, the sum the next layer would have received.
- Down units (``DownUnit``): ResBlocks with the time embedding, then a stride-2 downsampling; both flows have
  the same layout and their own weights.
- PSA (Eqs. 2-5, ``ParameterSharedAttention``): query and key projections shared by the flows, one value
  projection per flow; each flow queries the other flow's keys and takes the other flow's values
  (cross-attention; ``psa_values: own`` takes its own values instead), and the result is added back through
  its own learnable gamma, initialised to 0, so PSA is the identity at initialisation (SAGAN, the paper's
  [37]). Affordability at 128 px: the query/key dimension is C / ``psa_reduction`` (SAGAN's C/8), and keys and
  values are average-pooled to at most ``psa_kv_size`` x ``psa_kv_size`` positions (16: 256 keys), while the
  queries keep full resolution (spatial-reduction attention). At 128 px the first PSA, at 64 x 64, then costs
  4096 x 256 scores per image instead of 4096 x 4096.
- The two flows are summed before the bottleneck; the prior branch's output is added there too (Eq. 6). The
  skip connection of each level is the sum of both flows' post-PSA features at that level (the paper says
  "the outputs of the corresponding units in feature encoding"; the sum is our reading of two flows), and the
  last up unit's output is joined with the sum of the two SDB outputs at full resolution.
- Prior branch (``PriorBranch``): conv-BN-ReLU, then four units of two (3x3 conv, BN, ReLU), the first conv of
  each with stride 2, down to the bottleneck's size and channels. A linear layer on its globally pooled output
  gives the "is there a tumour?" logit (Eq. 7, ``aux["prior_logit"]`` [B,1]); a 1x1 conv maps the penultimate
  unit to one channel (Eqs. 8-9, ``aux["prior_mask"]`` [B,1,H/8,W/8] logits). Both depend on the image only, so
  ``encode`` computes them once per image. Their losses: ``methods/pgdiffseg.py``, ``eps_prior``.
- Output head: two channels, the noise eps (the paper's Eq. 19 noise-prediction MSE) and clean-mask logits x0,
  like PalScDiff's heads, so one trained model can be sampled through either (``predicts_both``). At CPU
  budgets the x0 head is the usable one (README, PalScDiff results); the preset samples through it.

Options (``model.options``): ``sdb_layers`` (3; the paper does not give L), ``psa_reduction`` (8),
``psa_kv_size`` (16), ``psa_values`` (``other`` or ``own``), ``psa`` (true; false lets the flows run apart
until the bottleneck, for ablation), ``prior`` (true; false drops the branch, for ablation), ``leaky_slope``
(0.2). ``channel_mult`` needs four entries (four down and four up units), and H and W
must be divisible by 16.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import MODELS, Denoiser, DenoiserOutput
from .blocks import AttentionBlock, Downsample, ResBlock, TimeEmbedding, Upsample, cross_attend, norm, pool_to

OUT_CHANNELS = 2  # eps, x0 logits
LEVELS = 4


def conv_bn_act(cin: int, cout: int, act: nn.Module, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), act)


class SlimDenseBlock(nn.Module):
    """[B, cin, H, W] -> [B, channels, H, W]: stem, then ``layers`` dense layers joined by addition (Eq. 1)."""

    def __init__(self, cin: int, channels: int, layers: int = 3, beta: float = 0.2, slope: float = 0.2) -> None:
        super().__init__()
        self.beta = beta
        self.stem = nn.Conv2d(cin, channels, 3, padding=1)
        self.layers = nn.ModuleList(
            nn.Sequential(conv_bn_act(channels, channels, nn.LeakyReLU(slope)),
                          conv_bn_act(channels, channels, nn.LeakyReLU(slope)))
            for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.stem(x)
        for layer in self.layers:
            total = total + self.beta * layer(total)
        return total


class DownUnit(nn.Module):
    """ResBlocks with the time embedding at the input resolution, then a stride-2 downsampling."""

    def __init__(self, cin: int, cout: int, temb_dim: int, num_res_blocks: int, groups: int, dropout: float,
                 attention: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(cin if i == 0 else cout, cout, temb_dim, groups, dropout)
                                    for i in range(num_res_blocks))
        self.attention = AttentionBlock(cout, groups=groups) if attention else nn.Identity()
        self.down = Downsample(cout)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, temb)
        return self.down(self.attention(h))


class ParameterSharedAttention(nn.Module):
    """(condition c, denoising d) [B,C,H,W] each -> (c', d') with c' = c + gamma_c A(c, d), d' = d + gamma_d
    A(d, c) (Eqs. 2-5; see the module docstring for the reading, the reduced dimension and the pooled keys).

    ``condition_out`` and ``denoise_out`` are identity taps on the two outputs, so that Grad-CAM (and any
    forward hook) can address the post-PSA features by name.
    """

    def __init__(self, channels: int, reduction: int = 8, kv_size: int = 16, values: str = "other",
                 groups: int = 8) -> None:
        super().__init__()
        if values not in ("other", "own"):
            raise ValueError(f"psa_values must be 'other' or 'own', got {values!r}")
        if kv_size < 1:
            raise ValueError(f"psa_kv_size must be >= 1, got {kv_size}")
        dim = max(4, channels // reduction)
        self.values, self.kv_size = values, kv_size
        self.norm_c, self.norm_d = norm(channels, groups), norm(channels, groups)
        self.query = nn.Conv2d(channels, dim, 1)  # shared by both flows
        self.key = nn.Conv2d(channels, dim, 1)  # shared by both flows
        self.value_c = nn.Conv2d(channels, channels, 1)
        self.value_d = nn.Conv2d(channels, channels, 1)
        self.gamma_c = nn.Parameter(torch.zeros(()))
        self.gamma_d = nn.Parameter(torch.zeros(()))
        self.condition_out = nn.Identity()
        self.denoise_out = nn.Identity()

    def forward(self, c: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nc, nd = self.norm_c(c), self.norm_d(d)
        pc, pd = pool_to(nc, self.kv_size), pool_to(nd, self.kv_size)
        q_c, q_d = self.query(nc), self.query(nd)
        k_c, k_d = self.key(pc), self.key(pd)
        v_c, v_d = self.value_c(pc), self.value_d(pd)
        if self.values == "other":
            semantic, denoising = cross_attend(q_c, k_d, v_d), cross_attend(q_d, k_c, v_c)
        else:
            semantic, denoising = cross_attend(q_c, k_d, v_c), cross_attend(q_d, k_c, v_d)
        return (self.condition_out(c + self.gamma_c * semantic), self.denoise_out(d + self.gamma_d * denoising))


class PriorBranch(nn.Module):
    """image [B,C,H,W] -> (features [B, out, H/16, W/16], class logit [B,1], mask logits [B,1,H/8,W/8])."""

    def __init__(self, image_channels: int, channels: list[int]) -> None:
        super().__init__()
        if len(channels) != LEVELS:
            raise ValueError(f"the prior branch needs {LEVELS} unit widths, got {channels}")
        self.stem = conv_bn_act(image_channels, channels[0], nn.ReLU())
        widths = [channels[0]] + list(channels)
        self.units = nn.ModuleList(
            nn.Sequential(conv_bn_act(widths[i], widths[i + 1], nn.ReLU(), stride=2),
                          conv_bn_act(widths[i + 1], widths[i + 1], nn.ReLU()))
            for i in range(LEVELS))
        self.mask_head = nn.Conv2d(widths[-2], 1, 1)
        self.classifier = nn.Linear(widths[-1], 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.stem(image)
        for i, unit in enumerate(self.units):
            h = unit(h)
            if i == LEVELS - 2:
                mask = self.mask_head(h)
        logit = self.classifier(h.mean(dim=(-2, -1)))
        return h, logit, mask


class UpUnit(nn.Module):
    """Join the skip (concatenation), ResBlocks with the time embedding, then upsample to ``cout`` channels."""

    def __init__(self, cin: int, skip: int, c: int, cout: int, temb_dim: int, num_res_blocks: int, groups: int,
                 dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock((cin + skip) if i == 0 else c, c, temb_dim, groups, dropout)
                                    for i in range(num_res_blocks))
        self.up = Upsample(c, cout)

    def forward(self, h: torch.Tensor, skip: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = torch.cat([h, skip], dim=1)
        for block in self.blocks:
            h = block(h, temb)
        return self.up(h)


class Bottleneck(nn.Module):
    """ResBlock, self-attention, ResBlock (the paper's Fig. 12b)."""

    def __init__(self, channels: int, temb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.res1 = ResBlock(channels, channels, temb_dim, groups, dropout)
        self.attention = AttentionBlock(channels, groups=groups)
        self.res2 = ResBlock(channels, channels, temb_dim, groups, dropout)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.res2(self.attention(self.res1(h, temb)), temb)


@MODELS.register("pgdiffseg")
class PGDiffSeg(Denoiser):
    predicts_both = True
    cam_layers = {
        "condition": [f"condition_flow.{i}" for i in range(LEVELS)],
        "denoising": [f"denoise_flow.{i}" for i in range(LEVELS)],
        "psa": ([[f"denoise_flow.{i}", f"psa.{i}.denoise_out"] for i in range(LEVELS)]
                + [[f"condition_flow.{i}", f"psa.{i}.condition_out"] for i in range(LEVELS)]),
        "prior": f"prior.units.{LEVELS - 1}",
        "prior_target": "prior_logit",
    }

    def __init__(self, image_channels: int, prediction: str = "epsilon", base_channels: int = 32,
                 channel_mult: list[int] = (1, 2, 4, 4), num_res_blocks: int = 1,
                 attention_levels: list[bool] = (False, False, False, False), num_groups: int = 8,
                 dropout: float = 0.0, sdb_layers: int = 3, psa_reduction: int = 8, psa_kv_size: int = 16,
                 psa_values: str = "other", psa: bool = True, prior: bool = True,
                 leaky_slope: float = 0.2) -> None:
        """``attention_levels``: self-attention inside the down units (in both flows) before downsampling;
        the bottleneck always has it."""
        super().__init__()
        channel_mult, attention_levels = list(channel_mult), list(attention_levels)
        if len(channel_mult) != LEVELS or len(attention_levels) != LEVELS:
            raise ValueError(f"pgdiffseg has {LEVELS} down and {LEVELS} up units: channel_mult and "
                             f"attention_levels need {LEVELS} entries, got {channel_mult}, {attention_levels}")
        self.prediction = prediction
        self.multiple = 2 ** LEVELS
        base = base_channels
        chans = [base * m for m in channel_mult]
        temb_dim = 4 * base
        self.time = TimeEmbedding(base, temb_dim)
        self.sdb_image = SlimDenseBlock(image_channels, base, sdb_layers, slope=leaky_slope)
        self.sdb_mask = SlimDenseBlock(1, base, sdb_layers, slope=leaky_slope)
        ins = [base] + chans[:-1]

        def flow() -> nn.ModuleList:
            return nn.ModuleList(DownUnit(ins[i], chans[i], temb_dim, num_res_blocks, num_groups, dropout,
                                          bool(attention_levels[i])) for i in range(LEVELS))

        self.condition_flow, self.denoise_flow = flow(), flow()
        self.psa = nn.ModuleList(ParameterSharedAttention(c, psa_reduction, psa_kv_size, psa_values, num_groups)
                                 for c in chans) if psa else None
        self.prior = PriorBranch(image_channels, chans) if prior else None
        self.bottleneck = Bottleneck(chans[-1], temb_dim, num_groups, dropout)
        # Up unit j works at level LEVELS-1-j, joins that level's skip, and upsamples to the next level's width.
        outs = list(reversed(ins))
        self.decoder = nn.ModuleList(
            UpUnit(chans[-1] if j == 0 else outs[j - 1], chans[LEVELS - 1 - j], chans[LEVELS - 1 - j], outs[j],
                   temb_dim, num_res_blocks, num_groups, dropout)
            for j in range(LEVELS))
        self.final = ResBlock(2 * base, base, temb_dim, num_groups, dropout)
        self.out = nn.Sequential(norm(base, num_groups), nn.SiLU(), nn.Conv2d(base, OUT_CHANNELS, 3, padding=1))

    def encode(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = image.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"pgdiffseg needs H and W divisible by {self.multiple}, got {h}x{w}")
        condition = {"image": self.sdb_image(image)}
        if self.prior is not None:
            condition["prior"], condition["prior_logit"], condition["prior_mask"] = self.prior(image)
        return condition

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, condition: dict[str, torch.Tensor]) -> DenoiserOutput:
        temb = self.time(t)
        c0, d0 = condition["image"], self.sdb_mask(x_t)
        c, d, skips = c0, d0, []
        for i, (cond_unit, noise_unit) in enumerate(zip(self.condition_flow, self.denoise_flow)):
            c, d = cond_unit(c, temb), noise_unit(d, temb)
            if self.psa is not None:
                c, d = self.psa[i](c, d)
            skips.append(c + d)
        h = skips[-1]
        if self.prior is not None:
            h = h + condition["prior"]  # Eq. 6
        h = self.bottleneck(h, temb)
        for up in self.decoder:
            h = up(h, skips.pop(), temb)
        y = self.out(self.final(torch.cat([h, c0 + d0], dim=1), temb))
        aux = {k: condition[k] for k in ("prior_logit", "prior_mask") if k in condition}
        return DenoiserOutput(eps=y[:, :1], x0=y[:, 1:], aux=aux)
