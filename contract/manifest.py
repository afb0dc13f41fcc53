"""The manifest: the single description of an exported model version, and the repository layout.

    models/<name>/<version>/manifest.json     (version: a positive integer, as in TensorFlow Serving)

Export writes a version aside and renames it into place only after every gate passed, so any
directory whose name is an integer and that holds a manifest is complete. Serve and the clients read
only the manifest; nothing is guessed from file names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.recipes import InputRecipe, RecipeError

MANIFEST_FILE = "manifest.json"
SCHEMA = "pocketcnn.manifest/2"
# /1: before input recipes (every /1 model crops the centre of a photo, which is what `crop` does), calibration
# and the out-of-distribution detector. Versions published with it keep being served.
SCHEMAS = ("pocketcnn.manifest/1", SCHEMA)
# Model names appear in URLs and become directory names: keep them to a safe alphabet.
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VERSION_PATTERN = re.compile(r"^[1-9][0-9]{0,17}$")

_REQUIRED = {
    "schema": str,
    "name": str,
    "version": int,
    "labels": list,
    "input": dict,
    "output": dict,
    "artifacts": dict,
}
_REQUIRED_ARTIFACT = {"file": str, "format": str, "sha256": str, "bytes": int, "input": dict, "output": dict}


class ManifestError(ValueError):
    """A manifest is missing, unreadable or incomplete."""


def is_valid_model_name(name: str) -> bool:
    return bool(MODEL_NAME_PATTERN.match(name)) and ".." not in name


def validate_manifest(manifest: Any, where: str = "manifest") -> dict:
    """Check the fields every reader relies on; return the manifest or raise ManifestError."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"{where}: expected a JSON object")
    for key, kind in _REQUIRED.items():
        if not isinstance(manifest.get(key), kind):
            raise ManifestError(f"{where}: field '{key}' is missing or not a {kind.__name__}")
    if manifest["schema"] not in SCHEMAS:
        raise ManifestError(f"{where}: schema is {manifest['schema']!r}, this reader knows {', '.join(SCHEMAS)}")
    if manifest["schema"] == SCHEMA:
        try:
            InputRecipe.parse(manifest["input"].get("recipe"))
        except RecipeError as err:
            raise ManifestError(f"{where}: input.recipe: {err}") from None
    shape = manifest["input"].get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(v, int) for v in shape[1:])):
        raise ManifestError(f"{where}: input.shape must be [batch, height, width, channels]")
    if not manifest["labels"] or not all(isinstance(v, str) for v in manifest["labels"]):
        raise ManifestError(f"{where}: labels must be a non-empty list of strings")
    for key, artifact in manifest["artifacts"].items():
        for field, kind in _REQUIRED_ARTIFACT.items():
            if not isinstance(artifact.get(field), kind):
                raise ManifestError(f"{where}: artifacts.{key}.{field} is missing or not a {kind.__name__}")
    return manifest


def read_manifest(version_dir: str | Path) -> dict:
    path = Path(version_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest (is this an exported model version?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path}: cannot be read ({err})") from None
    return validate_manifest(manifest, str(path))


def input_recipe(manifest: dict) -> InputRecipe:
    """How a photo becomes this model's input: the manifest's input.recipe (schema /1: crop)."""
    return InputRecipe.parse(manifest["input"].get("recipe") if manifest["schema"] == SCHEMA else None)


def input_size(manifest: dict) -> tuple[int, int, int]:
    """(height, width, channels) of the model input described by `manifest`."""
    _, height, width, channels = manifest["input"]["shape"]
    return height, width, channels


def held_out_accuracy(manifest: dict, artifact_key: str | None = None) -> float:
    """Accuracy on the run's held-out test images: of one artifact if given, else of the source model."""
    if artifact_key is not None:
        value = manifest["artifacts"].get(artifact_key, {}).get("accuracy")
        if isinstance(value, (int, float)):
            return float(value)
    return float(manifest.get("source", {}).get("accuracy", 0.0))


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    path: Path


class ModelRepository:
    """A directory of models/<name>/<version>/ folders, as export publishes them."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def model_dir(self, name: str) -> Path:
        if not is_valid_model_name(name):
            raise ManifestError(
                f"'{name}' is not a valid model name (letters, digits, '_', '.', '-'; at most 64)"
            )
        return self.root / name

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and is_valid_model_name(p.name))

    def versions(self, name: str) -> list[ModelVersion]:
        """Published versions of `name`, oldest first. Folders being written (hidden) are ignored."""
        directory = self.model_dir(name)
        if not directory.is_dir():
            return []
        found = [
            ModelVersion(name, int(p.name), p)
            for p in directory.iterdir()
            if _VERSION_PATTERN.match(p.name) and (p / MANIFEST_FILE).is_file()
        ]
        return sorted(found, key=lambda v: v.version)

    def next_version(self, name: str) -> int:
        directory = self.model_dir(name)
        taken = ([int(p.name) for p in directory.iterdir() if _VERSION_PATTERN.match(p.name)]
                 if directory.is_dir() else [])
        return max(taken, default=0) + 1
