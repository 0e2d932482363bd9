"""Which layers Grad-CAM explains: the views asked for (``--layers``, ``--psa-pairs``, ``--prior-layer``, else
the model's ``cam_layers``), a probe of every named module in one forward pass, and one-line errors for
layers Grad-CAM cannot use (not called, called more than once, no [B,C,H,W] output)."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

import torch

from ...errors import LesiondiffError
from ...models import Denoiser
from .trajectory import timestep_batch

_BLOCK_WORDS = re.compile(r"(^|\.)(down|up|mid|flow|encoder|decoder|level|unit|block|stage|layer)")


@dataclass
class CamViews:
    """What to show: grid rows by group, (before, after) pairs, and an optional prior layer with its aux key."""

    groups: dict[str, list[str]]
    psa: list[tuple[str, str]] = field(default_factory=list)
    prior: str | None = None
    prior_target: str | None = None

    @property
    def grid_layers(self) -> list[str]:
        return [name for names in self.groups.values() for name in names]

    @property
    def layers(self) -> list[str]:
        """Every layer whose CAM follows the mask target: the grid's, then the pairs' not already in it."""
        return list(dict.fromkeys([*self.grid_layers, *(name for pair in self.psa for name in pair)]))


def _split_names(value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [s.strip() for s in items if s.strip()]


def parse_pairs(value: str | list | None) -> list[tuple[str, str]] | None:
    """``"before:after,before:after"`` (or a list of pairs) -> [(before, after), ...]; "none" -> []."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() == "none":
            return []
        items = [item.split(":") for item in _split_names(value)]
    else:
        items = [list(item) for item in value]
    bad = [":".join(item) for item in items if len(item) != 2 or not all(s.strip() for s in item)]
    if bad:
        raise LesiondiffError(f"PSA pair {bad[0]!r}: expected before:after (two layer names)")
    return [(a.strip(), b.strip()) for a, b in items]


def resolve_views(model: Denoiser, layers: str | list[str] | None = None, psa_pairs: str | list | None = None,
                  prior_layer: str | None = None, prior_target: str | None = None) -> CamViews:
    """The views asked for, each one falling back to the model's ``cam_layers`` where it is not given.

    ``layers`` replaces the grid's rows (one group, "layers"); ``psa_pairs`` "none" and ``prior_layer`` "none"
    turn those views off.
    """
    defaults = model.cam_layers
    names = _split_names(layers)
    if names:
        groups = {"layers": names}
    else:
        groups = {key: [str(v) for v in value] for key, value in defaults.items()
                  if key != "psa" and isinstance(value, (list, tuple)) and value}
    pairs = parse_pairs(psa_pairs)
    if pairs is None:
        pairs = parse_pairs(defaults.get("psa", [])) or []
    if prior_layer is not None and prior_layer.strip().lower() == "none":
        prior, target = None, None
    else:
        prior = prior_layer or defaults.get("prior")
        target = prior_target or defaults.get("prior_target")
        if bool(prior) != bool(target):
            missing = "--prior-target (a key of the model's aux outputs)" if prior else "--prior-layer"
            raise LesiondiffError(f"the prior view needs both a layer and an aux target: add {missing}")
    return CamViews(groups, pairs, prior or None, target or None)


def _depth(name: str) -> int:
    return name.count(".")


def probe_layers(model: Denoiser, x_t: torch.Tensor, t: int, image: torch.Tensor) -> dict[str, tuple[int, str]]:
    """One forward pass ``model(x_t, t, image)`` with a counting hook on every named module:
    name -> (calls in that pass, what the last call returned: "[B,C,H,W]" for a tensor, else its type)."""
    seen: dict[str, tuple[int, str]] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_module, _args, output, name=name):
            what = (str(list(output.shape)) if isinstance(output, torch.Tensor) else type(output).__name__)
            seen[name] = (seen.get(name, (0, ""))[0] + 1, what)

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x_t, timestep_batch(t, x_t), image)
    finally:
        for handle in handles:
            handle.remove()
    return {name: seen.get(name, (0, "")) for name, _ in model.named_modules() if name}


def _usable(entry: tuple[int, str]) -> bool:
    calls, what = entry
    return calls == 1 and what.startswith("[") and what.count(",") == 3


def candidate_layers(probe: dict[str, tuple[int, str]], n: int = 8) -> list[str]:
    """A few layers Grad-CAM can use (called once, feature-map output), block-like names first, shallow first."""
    usable = [name for name, entry in probe.items() if _usable(entry)]
    order = {name: i for i, name in enumerate(usable)}
    usable.sort(key=lambda s: (_BLOCK_WORDS.search(s) is None, _depth(s), order[s]))
    return usable[:n]


def format_layers(probe: dict[str, tuple[int, str]]) -> str:
    """Every named module: calls per forward pass, output shape, and whether Grad-CAM can use it."""
    lines = [f"{'layer':<48} {'calls':>5}  output"]
    for name, (calls, what) in probe.items():
        mark = "" if _usable((calls, what)) else "  (not usable: " + (
            "never called" if calls == 0 else f"called {calls} times" if calls > 1 else "not a [B,C,H,W] map") + ")"
        lines.append(f"{name:<48} {calls:>5}  {what}{mark}")
    return "\n".join(lines)


def check_layers(model: Denoiser, names: list[str], probe: dict[str, tuple[int, str]]) -> None:
    """A one-line LesiondiffError for the first name Grad-CAM cannot use, naming the layer and what to do."""
    modules = dict(model.named_modules())
    some = ", ".join(candidate_layers(probe))
    for name in names:
        if name not in modules or not name:
            close = difflib.get_close_matches(name, [m for m in modules if m], n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise LesiondiffError(f"unknown layer {name!r} in {type(model).__name__}; {hint}usable layers include: "
                                  f"{some} (--list-layers shows all)")
        calls, what = probe[name]
        kind = type(modules[name]).__name__
        if calls == 0:
            entries = [f"{name}.{child}" for child, _ in modules[name].named_children()][:3]
            also = f"; name one of its entries, e.g. {', '.join(entries)}" if entries else ""
            raise LesiondiffError(f"layer {name!r} ({kind}) is not called in the forward pass (a container or an "
                                  f"unused module){also}")
        if calls > 1:
            raise LesiondiffError(f"layer {name!r} ({kind}) is called {calls} times per forward pass; Grad-CAM needs a "
                                  f"layer called once (its activation and gradient would not pair up)")
        if not _usable(probe[name]):
            raise LesiondiffError(f"layer {name!r} ({kind}) outputs {what}, not a feature map [B,C,H,W]; Grad-CAM "
                                  f"needs one")
