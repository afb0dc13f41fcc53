"""The contract between pocketcnn's stages: image -> tensor, the run folder, the manifest.

No TensorFlow here: the serving install and the clients import this package too.
"""

from contract.image import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_FORMATS,
    ImageError,
    ImageTooLarge,
    color_mode_for,
    decode_image,
)
from contract.manifest import (
    MANIFEST_FILE,
    ManifestError,
    ModelRepository,
    ModelVersion,
    input_recipe,
    input_size,
    is_valid_model_name,
    read_manifest,
)
from contract.recipes import InputRecipe, apply_recipe

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "InputRecipe",
    "apply_recipe",
    "SUPPORTED_FORMATS",
    "ImageError",
    "ImageTooLarge",
    "color_mode_for",
    "decode_image",
    "MANIFEST_FILE",
    "ManifestError",
    "ModelRepository",
    "ModelVersion",
    "input_recipe",
    "input_size",
    "is_valid_model_name",
    "read_manifest",
]
