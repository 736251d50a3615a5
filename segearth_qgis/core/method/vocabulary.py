"""The classes a user types: one class per line, commas between synonyms, each synonym its own text query."""

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

BACKGROUND_NAMES = ("background", "clutter", "others", "other", "unclassified")
UNCLASSIFIED = "unclassified"


@dataclass(frozen=True)
class Vocabulary:
    """Classes in order; each class is a tuple of one or more synonyms (the queries)."""

    classes: tuple[tuple[str, ...], ...]

    @classmethod
    def parse(cls, text: str) -> "Vocabulary":
        """Parse ``"background\\nbuilding,roof\\nwater"``: blank lines and blank synonyms are ignored; a control
        character (other than a tab) is refused, naming its line."""
        if not isinstance(text, str):
            raise TypeError("the vocabulary is text: one class per line, commas between synonyms")
        classes, seen = [], {}
        for number, line in enumerate(text.replace("\\n", "\n").splitlines(), 1):  # qgis_process passes \n as is
            control = next((c for c in line if c != "\t" and unicodedata.category(c) == "Cc"), None)
            if control is not None:
                raise ValueError(f"class line {number} contains the control character U+{ord(control):04X}: remove it")
            synonyms = tuple(dict.fromkeys(name.strip() for name in line.split(",") if name.strip()))
            for name in synonyms:
                if seen.setdefault(name.lower(), number) != number:
                    raise ValueError(f"'{name}' is on class lines {seen[name.lower()]} and {number}: a word can "
                                     "name one class only; merge the lines (synonyms go on one line, e.g. road,lane)")
            if synonyms:
                classes.append(synonyms)
        if not classes:
            raise ValueError("the vocabulary is empty: type one class per line, e.g. 'building,roof' then 'road'")
        return cls(tuple(classes))

    @classmethod
    def from_classes(cls, classes: Iterable[str | Sequence[str]]) -> "Vocabulary":
        """Build from a list whose items are a name or a list of synonyms."""
        return cls.parse("\n".join(c if isinstance(c, str) else ",".join(c) for c in classes))

    @property
    def class_names(self) -> list[str]:
        """The first synonym of each class, the name shown in legends."""
        return [synonyms[0] for synonyms in self.classes]

    @property
    def queries(self) -> list[str]:
        """Every synonym in order: the text queries the model embeds."""
        return [name for synonyms in self.classes for name in synonyms]

    @property
    def query_class(self) -> np.ndarray:
        """For each query, the index of its class."""
        return np.array([i for i, synonyms in enumerate(self.classes) for _ in synonyms], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.classes)

    def background(self, name: str | None = None) -> tuple[list[str], int]:
        """(class names, background index) for the threshold rule.

        ``name`` picks the class whose synonyms include it; without a name, the first background-like line
        (background, clutter, others, unclassified) is used. Otherwise ``name`` or ``unclassified`` is appended as an
        extra class with no text query: it only receives pixels below the threshold, never a real class's pixels.
        """
        wanted = [name.strip().lower()] if name and name.strip() else list(BACKGROUND_NAMES)
        for candidate in wanted:
            for index, synonyms in enumerate(self.classes):
                if candidate in (s.lower() for s in synonyms):
                    return self.class_names, index
        return [*self.class_names, name.strip() if name and name.strip() else UNCLASSIFIED], len(self.classes)

    def to_text(self) -> str:
        return "\n".join(",".join(synonyms) for synonyms in self.classes)
