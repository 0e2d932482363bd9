"""matplotlib has one home, ``lesiondiff/render/``: no other module imports it, at the top of a file or inside a
function, nor takes ``pyplot`` from render; read from the source with ``ast``, like test_import_cycles."""

import ast
from pathlib import Path

import lesiondiff

ROOT = Path(lesiondiff.__file__).parent


def draws(source: str) -> list[str]:
    """The imports in ``source`` that reach matplotlib: ``matplotlib...`` modules and the name ``pyplot``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "matplotlib"]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if not node.level and module.split(".")[0] == "matplotlib":
                found.append(module)
            found += [f"{module}.{a.name}" for a in node.names if a.name == "pyplot" and module != "matplotlib"]
    return found


def test_only_render_imports_matplotlib():
    where = {path.relative_to(ROOT).as_posix(): draws(path.read_text(encoding="utf-8"))
             for path in ROOT.rglob("*.py")}
    assert where["render/figures.py"] == ["matplotlib", "matplotlib.pyplot"]  # the scan sees imports in functions
    outside = {name: found for name, found in where.items() if found and not name.startswith("render/")}
    assert outside == {}


def test_the_scan_finds_every_form():
    source = ("import matplotlib\nimport matplotlib.pyplot as plt\nfrom matplotlib import colormaps\n"
              "def f():\n    from ..render.figures import pyplot, save\n")
    assert draws(source) == ["matplotlib", "matplotlib.pyplot", "matplotlib", "render.figures.pyplot"]
    assert draws("from .figures import save\nimport numpy\n") == []
