"""``lesiondiff models``: the models that ship with the package."""

from __future__ import annotations


def register(sub) -> None:
    """Add this module's commands to the ``lesiondiff`` sub-command parsers."""
    md = sub.add_parser("models", help="list the models that ship with lesiondiff (use with --model NAME)",
                        description="Each shipped model is a run folder with a model card (MODEL_CARD.md): "
                                    "predict, report, serve and analyze read it with --model NAME, no training "
                                    "needed.")
    md.add_argument("--markdown", action="store_true", help="print the table as markdown (the README's)")


def cmd_models(args) -> int:
    from ..shipped import model_bytes, model_card, model_names

    names = model_names()
    if not names:
        print("no models ship with this installation")
        return 0
    if args.markdown:
        print(markdown_table([model_card(n) for n in names]))
        return 0
    print(f"{'name':<8} {'data':<22} {'model':<14} {'px':>4} {'MB':>5}  test split: lesion-image Dice, overall Dice "
          "(per image, original size, threshold 0.5)")
    for name in names:
        c = model_card(name)
        mb = model_bytes(name) / 1e6
        t = c["test"]
        print(f"{name:<8} {c['data']['folder']:<22} {c['candidate']:<14} {c['size']:>4} {mb:>5.1f}  "
              f"{100 * t['lesion_dice']:.1f} %, {100 * t['dice']:.1f} % over {t['images']} images")
    print("card: <model folder>/MODEL_CARD.md; e.g. lesiondiff predict --model NAME IMAGES --out OUT")
    return 0


def markdown_table(cards: list[dict]) -> str:
    """The shipped models as a markdown table, from their cards (test split, per image, original size)."""
    lines = ["| `--model` | data | model | test images (lesion / lesion-free) | lesion-image Dice | overall Dice | "
             "lesion-free predicted empty | ECE | s / image (S) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in cards:
        t, s = c["test"], c["sampling"]
        free = (f"{100 * t['lesion_free_predicted_empty']:.1f} % of {t['lesion_free_images']}"
                if t["lesion_free_images"] else "–")
        lines.append(f"| `{c['name']}` | {c['data']['name']} | {c['candidate']}, {c['size']} px | "
                     f"{t['images']} ({t['lesion_images']} / {t['lesion_free_images']}) | "
                     f"{100 * t['lesion_dice']:.2f} % | {100 * t['dice']:.2f} % | {free} | {t['ece']:.4f} | "
                     f"{s['s_per_image']:.2f} ({s['samples']}) |")
    return "\n".join(lines)


COMMANDS = {"models": cmd_models}
