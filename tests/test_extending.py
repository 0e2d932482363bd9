"""docs/extending.md's worked example, run as it is written: its files (the blocks after
``<!-- file: PATH -->``) are written under a temporary folder; a separate Python process (this file run as a
script, so that the new parts register nowhere else) adds that folder's ``models/`` and ``methods/`` to the
packages' search paths, imports the two modules as ``models/__init__.py`` and ``methods/__init__.py`` would,
runs the page's tests, runs its ``lesiondiff`` commands (tiny settings laid over the train command) on the
phantom manifest in place of ``busi.csv``, and runs its Python block, whose result must equal the files
``lesiondiff predict`` wrote."""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from tiny_settings import TINY_MODEL

TESTS = Path(__file__).resolve().parent
DOC = TESTS.parent / "docs" / "extending.md"
FILES = re.compile(r"<!-- file: (\S+) -->\n```\w+\n(.*?)```", re.S)
DOC_FILES = {"src/lesiondiff/models/toyseg.py", "src/lesiondiff/methods/toyseg.py",
             "src/lesiondiff/presets/toyseg.yaml", "tests/models/test_toyseg.py",
             "tests/methods/test_toyseg.py"}
DOC_TESTS = ["test_the_condition_is_the_image_features_and_a_gate_in_0_1",
             "test_focal_with_gamma_0_is_bce_plus_dice",
             "test_the_sampler_gives_the_x0_heads_soft_probabilities",
             "test_options_are_checked_against_the_constructors"]
# laid over the page's train command: the tiny network, 32 px, three steps, and S = 2 samples of 2 steps,
# which the run's config.yaml keeps, so that predict and lesiondiff.load sample alike
TINY_TRAIN = [*TINY_MODEL, "data.size=32", "train.steps=3", "train.batch_size=4", "train.val_every=3",
              "train.log_every=1", "train.val_steps=2", "data.val_max_images=2", "sample.samples=2",
              "sample.steps=2"]


def marked(text: str, marker: str) -> str:
    """The fenced block right after ``<!-- marker -->``."""
    found = re.search(rf"<!-- {marker} -->\n```\w+\n(.*?)```", text, re.S)
    assert found, f"{DOC.name}: no fenced block after <!-- {marker} -->"
    return found.group(1)


def test_the_worked_example_trains_and_predicts(phantom_manifest, tmp_path):
    files = dict(FILES.findall(DOC.read_text(encoding="utf-8")))
    assert set(files) == DOC_FILES
    root = tmp_path / "doc"
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
    src = str(TESTS.parent / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(TESTS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, __file__, str(root), str(phantom_manifest)], cwd=root, env=env,
                          capture_output=True, text=True, encoding="utf-8")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"tests": DOC_TESTS}
    run = root / "runs" / "toyseg"
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert (cfg["model"]["name"], cfg["diffusion"]["objective"], cfg["sample"]["sampler"]) == (
        "toyseg", "x0_focal", "ddim_x0")
    with (run / "log.csv").open(encoding="utf-8") as f:
        assert {"focal", "dice"} <= set(next(csv.DictReader(f)))  # the loss's parts, logged by name
    predicted = json.loads((run / "pred" / "predict.json").read_text(encoding="utf-8"))
    assert (predicted["sampler"], predicted["samples"], predicted["split"]) == ("ddim_x0", 2, "test")
    assert (run / "pred" / "summary.json").is_file()  # evaluate


def drive(root: Path, manifest: str) -> None:
    """The page's parts registered, its tests, commands and Python block run (in the process this file is run
    as a script in); prints the tests that ran, as JSON."""
    import lesiondiff.methods
    import lesiondiff.models
    from lesiondiff.cli import main
    from test_api import assert_same, written

    for package in (lesiondiff.models, lesiondiff.methods):
        package.__path__.append(str(root.joinpath("src", *package.__name__.split("."))))
        importlib.import_module(f"{package.__name__}.toyseg")
    ran = []
    for path in (root / "tests" / "models" / "test_toyseg.py", root / "tests" / "methods" / "test_toyseg.py"):
        spec = importlib.util.spec_from_file_location(f"doc_{path.parent.name}_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name, test in vars(module).items():
            if name.startswith("test_") and callable(test):
                test()
                ran.append(name)
    text = DOC.read_text(encoding="utf-8")
    for line in marked(text, "commands").splitlines():
        argv = shlex.split(line.replace("busi.csv", manifest))
        assert argv[0] == "lesiondiff", line
        assert main(argv[1:] + (TINY_TRAIN if argv[1] == "train" else [])) == 0, line
    namespace: dict = {}
    exec(compile(marked(text, "python").replace("busi.csv", manifest), str(DOC), "exec"), namespace)
    result = namespace["result"]
    assert_same(result, written(root / "runs" / "toyseg" / "pred", namespace["row"]["id"]))
    assert ((result.samples > 0) & (result.samples < 1)).all()  # ddim_x0's soft probabilities
    print(json.dumps({"tests": ran}))


if __name__ == "__main__":
    drive(Path(sys.argv[1]), sys.argv[2])
