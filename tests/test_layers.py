"""The package's layers: each part imports only from the layers below it (read from the source with ``ast``, every
import, at the top of a file or inside a function), and the engine reaches a method only through the registries
that build.py fills, never ``methods/`` by name. This goes beyond test_import_cycles: a one-way import that
points up is refused too."""

from test_import_cycles import imports_of, module_names

# Layers from the bottom up; a part may import from any part of a lower layer, not from its own layer's other
# parts or from above. Keep DESIGN's diagram and docs/extending.md in step with this table.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("registry", "io_utils", "filters", "metrics", "uncertainty", "selective", "shipped"),
    ("config", "fusion", "postprocess"),
    ("models", "data", "pretraining", "presets"),
    ("diffusion", "curricula"),
    ("methods",),
    ("build", "render"),  # build: Config -> parts, after methods registered; render: numbers in, text and pixels out
    ("engine",),
    ("reporting", "api"),
    ("experiments", "analysis"),
    ("serve",),
    ("cli",),
]
# Lower parts a part must not import all the same: the engine reaches methods through build.py's registries;
# render draws numbers and knows no method or builder.
FORBIDDEN = {"engine": {"methods"}, "render": {"build", "methods", "diffusion", "models"}}
# The package's __init__ gives ``lesiondiff.load`` lazily.
TOP = {"__init__": {"api", "errors"}}


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def level(name: str) -> int:
    return next(k for k, group in enumerate(LAYERS) if name in group)


def violations(edges: set[tuple[str, str]]) -> list[str]:
    """The imports ``(importer part, imported part)`` against the table, as readable lines."""
    bad = []
    for a, b in sorted(edges):
        if a in TOP:
            ok = b in TOP[a]
        else:
            ok = level(b) < level(a) and b not in FORBIDDEN.get(a, set())
        if not ok:
            bad.append(f"{a} imports {b}")
    return bad


def package_edges() -> tuple[set[tuple[str, str]], set[str]]:
    mods = module_names()
    edges = {(part(name), part(target)) for name, path in mods.items() for target in imports_of(name, path, mods)}
    return {(a, b) for a, b in edges if a != b}, {part(m) for m in mods}


def test_every_part_has_a_layer():
    _, parts = package_edges()
    placed = {p for group in LAYERS for p in group} | set(TOP)
    assert parts - placed == set()


def test_imports_point_down_the_layers():
    edges, _ = package_edges()
    assert violations(edges) == []


def test_the_table_refuses_an_engine_that_imports_a_method_or_a_report():
    assert violations({("engine", "methods"), ("engine", "reporting"), ("engine", "build")}) == [
        "engine imports methods", "engine imports reporting"]
    assert violations({("render", "engine"), ("models", "methods"), ("data", "diffusion")}) == [
        "data imports diffusion", "models imports methods", "render imports engine"]
