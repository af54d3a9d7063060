"""Taxonomies, label normalisation, prompts and THE answer parser.

One parser serves evaluation and nightly classification, so "invalid" means the same thing everywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache

import yaml

from tasks.common.settings import INCLUDE_DIR

TAXONOMY_DIR = INCLUDE_DIR / "taxonomies"

DEFAULT_PROMPT_TEMPLATE = (
    "Fill in the blank: this is a photo of a {{}}, you should select the appropriate categories "
    "from the provided labels: [{labels}]"
)
ANSWER_TEMPLATE = "this is a photo of {label}."
_ANSWER_RE = re.compile(r"^this is a photo of (?:an? )?(?P<label>.+?)\s*\.?$")


def normalise(text: str) -> str:
    """Case- and whitespace-insensitive key for matching labels."""
    return " ".join(text.split()).casefold()


@dataclass(frozen=True)
class Taxonomy:
    name: str
    labels: tuple[str, ...]
    synonyms: dict[str, str] = field(default_factory=dict)  # normalised synonym -> canonical label

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for label in self.labels:
            key = normalise(label)
            if key in seen:
                raise ValueError(f"taxonomy {self.name!r}: label {label!r} duplicates {seen[key]!r}")
            seen[key] = label
        for syn, label in self.synonyms.items():
            if syn in seen and seen[syn] != label:
                raise ValueError(f"taxonomy {self.name!r}: synonym {syn!r} is ambiguous")

    def match(self, text: str) -> str | None:
        """Canonical label for a label or synonym, ignoring case and spacing; None when unknown."""
        key = normalise(text)
        for label in self.labels:
            if normalise(label) == key:
                return label
        return self.synonyms.get(key)

    def prompt(self, template: str = DEFAULT_PROMPT_TEMPLATE) -> str:
        """The user prompt, listing every label; `{labels}` in the template is replaced."""
        return template.format(labels=",".join(self.labels))

    @staticmethod
    def answer(label: str) -> str:
        """The assistant answer we train on (the CLIP-style phrasing the seed found ~5% more accurate)."""
        return ANSWER_TEMPLATE.format(label=label)

    def parse_answer(self, text: str | None) -> str | None:
        """Strictly parse a model answer into a canonical label, or None when it is invalid.

        The whole answer must be "this is a photo of <label>." — a label merely mentioned somewhere, or a
        prefix of a longer label, does not count.
        """
        if not text:
            return None
        m = _ANSWER_RE.match(normalise(text))
        return self.match(m.group("label")) if m else None


def available_taxonomies() -> list[str]:
    return sorted(p.stem for p in TAXONOMY_DIR.glob("*.yaml"))


@cache
def load_taxonomy(name: str) -> Taxonomy:
    """Load `include/taxonomies/<name>.yaml`."""
    path = TAXONOMY_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown taxonomy {name!r}; available: {', '.join(available_taxonomies())}")
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    labels = tuple(str(entry["name"]) for entry in doc["labels"])
    synonyms = {normalise(str(syn)): str(entry["name"]) for entry in doc["labels"] for syn in entry.get("synonyms", [])}
    return Taxonomy(name=str(doc.get("name", name)), labels=labels, synonyms=synonyms)
