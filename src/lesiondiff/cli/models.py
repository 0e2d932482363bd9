"""``lesiondiff models``: the models that ship with the package."""

from __future__ import annotations


def register(sub) -> None:
    """Add this module's commands to the ``lesiondiff`` sub-command parsers."""
    sub.add_parser("models", help="list the models that ship with lesiondiff (use with --model NAME)",
                   description="Each shipped model is a run folder with a model card (MODEL_CARD.md): predict, "
                               "report and serve read it with --model NAME, no training needed.")


def cmd_models(args) -> int:
    from ..shipped import model_card, model_dir, model_names

    names = model_names()
    if not names:
        print("no models ship with this installation")
        return 0
    print(f"{'name':<10} {'data':<28} {'preset':<10} {'size':>5} {'MB':>5}  test: lesion-image Dice, overall Dice "
          "(per image, threshold 0.5, original size)")
    for name in names:
        c = model_card(name)
        mb = sum(f.stat().st_size for f in model_dir(name).rglob("*") if f.is_file()) / 1e6
        t = c["test"]
        print(f"{name:<10} {c['data']['name']:<28} {c['preset']:<10} {c['size']:>5} {mb:>5.1f}  "
              f"{100 * t['lesion_dice']:.1f} %, {100 * t['dice']:.1f} % over {t['images']} test images")
    print("card: <model folder>/MODEL_CARD.md; e.g. lesiondiff predict --model NAME IMAGES --out OUT")
    return 0


COMMANDS = {"models": cmd_models}
