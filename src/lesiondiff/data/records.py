"""The record of one image and its mask files, as the dataset layouts find them (``layouts.py``) and volume
slicing makes them (``volumes.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Record:
    """One image and its mask files, with every path absolute.

    ``masks`` are unioned when read; an empty list means an all-background mask. ``case`` groups records
    of one patient for splitting (default: ``id``). ``extra`` holds layout-specific strings, e.g.
    ``{"fov": path, "source_split": "training"}`` for DRIVE.
    """

    id: str
    image: str
    masks: list[str] = field(default_factory=list)
    label: str = ""
    case: str = ""
    dataset: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.case:
            self.case = self.id
