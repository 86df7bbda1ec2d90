"""Example inputs a model folder ships: scenes to paint from and inputs to try, listed in its spec.

A spec's ``extra`` may list two kinds, each a list of ``{"name": ..., "file": ...}``:

- ``scenes``: label maps in the model's palette that the web page opens with and offers as
  starting points for painting (label-map models only);
- ``examples``: inputs of the model's kind (label maps, photos, grayscale photos) that a
  visitor can click to see a translation.

Every ``file`` is ``examples/<name>`` inside the model folder (PNG, JPEG or WebP), so the
examples travel with the folder and nothing outside it can be named.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from model.errors import SpecError
from model.model_folders import EXAMPLES_DIR
from model.spec import GeneratorSpec

# Spec ``extra`` key -> the kind of each entry it lists.
EXAMPLE_LISTS = {"scenes": "scene", "examples": "example"}
MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
}
# A plain file name: no separators, no leading dot, so "..", hidden files and paths are out.
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_NAME_LENGTH = 80


@dataclass(frozen=True)
class ExampleInput:
    """One listed example input: a scene or an example, its display name and its file."""

    kind: str
    name: str
    path: Path

    @property
    def file_name(self) -> str:
        return self.path.name

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.path.suffix.lower()]


def _entry_file(where: str, entry: object) -> tuple[str, str]:
    """A listing entry -> (display name, file name inside examples/), or a SpecError."""
    if not isinstance(entry, dict) or set(entry) != {"name", "file"}:
        raise SpecError(f"{where} must be an object with exactly 'name' and 'file', got {entry!r}")
    name, file = entry["name"], entry["file"]
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise SpecError(f"{where}: name must be text of 1 to {MAX_NAME_LENGTH} characters")
    folder, _, file_name = file.partition("/") if isinstance(file, str) else ("", "", "")
    if folder != EXAMPLES_DIR or not FILE_NAME.match(file_name):
        raise SpecError(
            f"{where}: file must be {EXAMPLES_DIR}/<file name> (letters, digits, '.', '_', "
            f"'-'), got {file!r}"
        )
    if Path(file_name).suffix.lower() not in MEDIA_TYPES:
        raise SpecError(
            f"{where}: {file!r} is not one of the image types {', '.join(sorted(MEDIA_TYPES))}"
        )
    return name.strip(), file_name


def example_inputs(folder: str | Path, spec: GeneratorSpec) -> list[ExampleInput]:
    """The scenes, then the examples, that ``spec`` lists, each checked to be a file in
    ``folder/examples/``; a SpecError names the first entry that is malformed or missing."""
    folder = Path(folder)
    root = (folder / EXAMPLES_DIR).resolve()
    found: list[ExampleInput] = []
    for key, kind in EXAMPLE_LISTS.items():
        entries = spec.extra.get(key, [])
        if not isinstance(entries, list):
            raise SpecError(f"{folder}: spec extra.{key} must be a list, got {entries!r}")
        if entries and kind == "scene" and spec.input_kind != "label_map":
            raise SpecError(
                f"{folder}: spec extra.{key} lists label maps to paint from, but the model "
                f"takes {spec.input_kind} inputs"
            )
        for index, entry in enumerate(entries):
            where = f"{folder}: spec extra.{key}[{index}]"
            name, file_name = _entry_file(where, entry)
            if any(other.file_name == file_name for other in found):
                raise SpecError(f"{where}: {EXAMPLES_DIR}/{file_name} is listed twice")
            path = folder / EXAMPLES_DIR / file_name
            if not path.is_file():
                raise SpecError(f"{where} ({name!r}): {path} is missing")
            if not path.resolve().is_relative_to(root):
                raise SpecError(f"{where}: {path} leads outside {root}")
            found.append(ExampleInput(kind, name, path))
    return found


def copy_example_inputs(source: str | Path, spec: GeneratorSpec, target: str | Path) -> int:
    """Copy the example files that ``spec`` lists from model folder ``source`` to ``target``
    (a new folder for the same model); returns how many were copied."""
    examples = example_inputs(source, spec)
    if examples:
        (Path(target) / EXAMPLES_DIR).mkdir(parents=True, exist_ok=True)
    for example in examples:
        shutil.copyfile(example.path, Path(target) / EXAMPLES_DIR / example.file_name)
    return len(examples)
