"""The reference on-device client: classify photos with the mobile bundle alone, as an app does.

Needs only ai-edge-litert, numpy and Pillow, and nothing else from this repository: copy this one file
into an app project (or read it as the recipe for a Kotlin/Swift port). What it does, step by step:

  1. Open the bundle (mobile_bundle.zip, or the folder it was extracted into): manifest.json,
     labels.txt, the .tflite files and reference/ (sample PNGs and reference.json).
  2. Load one .tflite (default model_int8.tflite) and read the class names stored inside it (the
     flatbuffer's metadata entry "labels"); they must equal labels.txt and the manifest's labels.
  3. Decode the photo like the server does: first frame, EXIF orientation, transparency on white,
     greyscale or RGB as the manifest's input color_mode says, centre crop to the input's aspect
     ratio, bilinear resize to height x width. Raw 0-255 pixels: scaling is inside the model.
  4. Quantize the pixels with the scale and zero-point of the model's input tensor (checked against
     the manifest), invoke, dequantize the output, and map it to the labels as percentages.

    python -m clients.ondevice mobile_bundle.zip shoe.jpg [--model model_float32.tflite] [--json]
    python -m clients.ondevice mobile_bundle.zip --verify     # the on-device self-check

`--verify` runs the bundle's reference samples through every .tflite (or the one given with --model)
and compares the outputs with reference.json within each file's tolerance: what an app should do
once after install or update, before trusting the model.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MODEL = "model_int8.tflite"
LABELS_FILE = "labels.txt"
MANIFEST_FILE = "manifest.json"
REFERENCE_DIR = "reference"
REFERENCE_FILE = "reference/reference.json"
LABELS_METADATA = "labels"  # name of the .tflite metadata entry that holds labels.txt

BAR_WIDTH = 30
_EIGHTHS = " ▏▎▍▌▋▊▉"
# The still-image formats the service accepts; other Pillow decoders stay closed to untrusted files.
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class BundleError(Exception):
    """The bundle is missing a file, inconsistent, or a model in it cannot be loaded."""


class PhotoError(ValueError):
    """The photo cannot be decoded."""


# --- the bundle ------------------------------------------------------------------------------------


class Bundle:
    """The files of a mobile bundle, from the zip or from the folder it was extracted into."""

    def __init__(self, location: str | Path):
        self.location = Path(location)
        if self.location.is_dir():
            self._files = {p.relative_to(self.location).as_posix(): p for p in self.location.rglob("*") if p.is_file()}
            self._zip = None
        elif zipfile.is_zipfile(self.location):
            self._zip = zipfile.ZipFile(self.location)
            self._files = {name: name for name in self._zip.namelist() if not name.endswith("/")}
        elif self.location.exists():
            raise BundleError(f"{self.location} is neither a zip file nor a folder; pass mobile_bundle.zip "
                              f"or the folder it was extracted into.")
        else:
            raise BundleError(f"{self.location} does not exist.")
        for required in (MANIFEST_FILE, LABELS_FILE):
            if required not in self._files:
                raise BundleError(f"{self.location} has no {required}; it is not a pocketcnn mobile bundle.")
        try:
            self.manifest = json.loads(self.read(MANIFEST_FILE))
            self.labels = self.read(LABELS_FILE).decode("utf-8").splitlines()
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BundleError(f"{self.location}: {MANIFEST_FILE} or {LABELS_FILE} cannot be read ({err}).") from None
        if self.manifest.get("labels") != self.labels:
            raise BundleError(f"{self.location}: {LABELS_FILE} and the manifest's labels differ.")
        shape = self.manifest.get("input", {}).get("shape")
        if not (isinstance(shape, list) and len(shape) == 4):
            raise BundleError(f"{self.location}: the manifest's input.shape is not [batch, height, width, channels].")

    @property
    def input_size(self) -> tuple[int, int, int]:
        _, height, width, channels = self.manifest["input"]["shape"]
        return int(height), int(width), int(channels)

    @property
    def color_mode(self) -> str:
        """Pillow mode of the model input: "L" for greyscale models, "RGB" for colour ones."""
        declared = self.manifest["input"].get("color_mode")
        if declared is None:
            declared = "grayscale" if self.input_size[2] == 1 else "rgb"
        modes = {"grayscale": "L", "rgb": "RGB"}
        if declared not in modes:
            raise BundleError(f"{self.location}: unknown input color_mode '{declared}' in the manifest.")
        return modes[declared]

    def names(self) -> list[str]:
        return sorted(self._files)

    def tflite_files(self) -> list[str]:
        return [name for name in self.names() if name.endswith(".tflite") and "/" not in name]

    def read(self, name: str) -> bytes:
        if name not in self._files:
            raise BundleError(f"{self.location} has no {name} (it holds: {', '.join(self.names())}).")
        if self._zip is not None:
            return self._zip.read(name)
        return Path(self._files[name]).read_bytes()

    def artifact_for(self, model_file: str) -> tuple[str, dict]:
        """(manifest key, manifest entry) of the artifact stored as `model_file`."""
        for key, artifact in self.manifest.get("artifacts", {}).items():
            if artifact.get("file") == model_file:
                return key, artifact
        raise BundleError(f"the manifest describes no artifact stored as {model_file}; "
                          f"models in this bundle: {', '.join(self.tflite_files())}")

    def reference(self) -> dict:
        return json.loads(self.read(REFERENCE_FILE))

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_embedded_labels(tflite: bytes) -> list[str] | None:
    """The labels stored in the .tflite's metadata table under "labels", or None if there are none."""
    from ai_edge_litert import schema_py_generated as schema

    try:
        model = schema.Model.GetRootAs(tflite, 0)
        for index in range(model.MetadataLength()):
            entry = model.Metadata(index)
            if (entry.Name() or b"").decode("utf-8") != LABELS_METADATA:
                continue
            buffer = model.Buffers(entry.Buffer())
            data = buffer.DataAsNumpy()
            if isinstance(data, np.ndarray) and data.size:
                raw = data.tobytes()
            elif buffer.Offset() > 1:  # large models keep buffers after the flatbuffer, addressed by offset
                raw = tflite[buffer.Offset(): buffer.Offset() + buffer.Size()]
            else:
                raw = b""
            return raw.decode("utf-8").splitlines()
    except (IndexError, ValueError, UnicodeDecodeError) as err:  # flatbuffers raise these on damaged bytes
        raise BundleError(f"the .tflite file's metadata cannot be read ({err})") from None
    return None


# --- the photo -------------------------------------------------------------------------------------


def decode_photo(source: str | Path | bytes, height: int, width: int, mode: str) -> np.ndarray:
    """A photo -> (height, width, channels) uint8 pixels, by the same rules as the service."""
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source,
                           formats=PHOTO_FORMATS)
        image.seek(0)  # the first frame of an animated GIF/WebP or a multi-page TIFF
        if image.format in ("JPEG", "MPO"):
            # Let the JPEG decoder skip detail the model cannot see (as the service does): decode at the
            # smallest scale that keeps at least twice the model's size.
            image.draft(mode, (2 * max(height, width),) * 2)
        image.load()
    except FileNotFoundError:
        raise PhotoError(f"{source}: no such file") from None
    except Exception as err:  # noqa: BLE001 - Pillow raises many types on bad bytes
        raise PhotoError(f"not a photo this client can read ({err})") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001, S110 - malformed EXIF must not make a good picture unusable: keep it as stored
        pass
    image = _to_mode(image, mode)
    image = _crop_and_resize(image, height, width)
    channels = 1 if mode == "L" else 3
    return np.asarray(image, dtype=np.uint8).reshape(height, width, channels)


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:  # 16-bit greyscale: 0-65535 onto 0-255
        values = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8), "L")
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.max() <= 1.0:
            values *= 255.0
        image = Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, as on a white app background (and as the service does).
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if image.mode == mode:
        return image
    if mode == "L" and image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")  # CMYK, palette, YCbCr... to RGB first, then to grey
    return image.convert(mode)


def _crop_and_resize(image: Image.Image, height: int, width: int) -> Image.Image:
    if image.size == (width, height):
        return image
    image_width, image_height = image.size
    target = width / height
    if image_width / image_height > target:  # wider than the model's input: crop the sides
        crop = image_height * target
        box = ((image_width - crop) / 2, 0.0, (image_width + crop) / 2, float(image_height))
    else:  # taller: crop top and bottom
        crop = image_width / target
        box = (0.0, (image_height - crop) / 2, float(image_width), (image_height + crop) / 2)
    # reducing_gap=3.0 is the service's setting: same pixels here and there for large photos.
    return image.resize((width, height), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)


# --- the model -------------------------------------------------------------------------------------


class Classifier:
    """One .tflite from a bundle, ready to classify photos."""

    def __init__(self, bundle: Bundle, model_file: str = DEFAULT_MODEL, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.bundle = bundle
        self.model_file = model_file
        self.key, self.artifact = bundle.artifact_for(model_file)
        self.model_bytes = bundle.read(model_file)
        try:
            self.interpreter = Interpreter(model_content=self.model_bytes, num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise BundleError(f"LiteRT cannot load {model_file}: {err}") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_quantization = _tensor_quantization(self.input)
        self.output_quantization = _tensor_quantization(self.output)
        if tuple(int(v) for v in self.input["shape"][1:]) != bundle.input_size:
            raise BundleError(f"{model_file} takes input {list(self.input['shape'])}, the manifest says "
                              f"{bundle.manifest['input']['shape']}")
        # The tensor's own quantization is what the model needs; a manifest that disagrees was written for
        # another file, and an app that trusted it would feed wrong numbers.
        for side, found in (("input", self.input_quantization), ("output", self.output_quantization)):
            declared = self.artifact.get(side, {}).get("quantization")
            if not _same_quantization(found, declared):
                raise BundleError(f"{model_file}: the {side} tensor's quantization {found} differs from the "
                                  f"manifest's {declared}")
        self.embedded_labels = read_embedded_labels(self.model_bytes)
        if self.embedded_labels is not None and self.embedded_labels != bundle.labels:
            raise BundleError(f"{model_file} carries labels {self.embedded_labels}, but {LABELS_FILE} "
                              f"says {bundle.labels}")
        self.labels = self.embedded_labels or bundle.labels
        classes = int(self.output["shape"][-1])
        if classes != len(self.labels):
            raise BundleError(f"{model_file} has {classes} outputs for {len(self.labels)} labels")

    def decode(self, photo: str | Path | bytes) -> np.ndarray:
        height, width, _ = self.bundle.input_size
        return decode_photo(photo, height, width, self.bundle.color_mode)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(height, width, channels) uint8 pixels -> float32 probabilities, one per label."""
        tensor = _quantize(pixels[np.newaxis], np.dtype(self.input["dtype"]), self.input_quantization)
        self.interpreter.set_tensor(self.input["index"], tensor)
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.output["index"])[0]
        return _dequantize(raw, self.output_quantization)

    def classify(self, photo: str | Path | bytes) -> list[dict]:
        """Every label with its percentage, most likely first (ties: lower index first, like argmax)."""
        probabilities = self.probabilities(self.decode(photo))
        total = float(probabilities.sum())
        # int8 outputs come in steps of 1/256 and need not add up to exactly 1: show shares of the total.
        shares = probabilities / total if total > 0 else probabilities
        order = sorted(range(len(shares)), key=lambda i: (-float(shares[i]), i))
        return [{"label": self.labels[i], "index": i, "percent": round(float(shares[i]) * 100, 2)} for i in order]

    def describe(self) -> dict:
        return {"name": self.bundle.manifest.get("name"), "version": self.bundle.manifest.get("version"),
                "format": self.key, "file": self.model_file}


def _tensor_quantization(details: dict) -> dict | None:
    scale, zero_point = details["quantization"]
    return None if scale == 0.0 else {"scale": float(scale), "zero_point": int(zero_point)}


def _same_quantization(found: dict | None, declared: dict | None) -> bool:
    if found is None or declared is None:
        return found is None and declared is None
    return (abs(found["scale"] - float(declared["scale"])) <= 1e-6 * abs(found["scale"])
            and found["zero_point"] == int(declared["zero_point"]))


def _quantize(pixels: np.ndarray, dtype: np.dtype, quantization: dict | None) -> np.ndarray:
    """0-255 pixels -> what the input tensor holds: real value = scale * (q - zero_point)."""
    if quantization is None:  # float model: the pixels themselves
        return pixels.astype(dtype)
    limits = np.iinfo(dtype)
    values = np.round(pixels.astype(np.float32) / quantization["scale"] + quantization["zero_point"])
    return np.clip(values, limits.min, limits.max).astype(dtype)


def _dequantize(values: np.ndarray, quantization: dict | None) -> np.ndarray:
    if quantization is None:
        return values.astype(np.float32)
    return (values.astype(np.float32) - quantization["zero_point"]) * quantization["scale"]


# --- the self-check --------------------------------------------------------------------------------


@dataclass
class ModelCheck:
    model_file: str
    key: str = ""
    tolerance: float | None = None
    max_abs_diff: float | None = None
    samples: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict:
        return {"model_file": self.model_file, "format": self.key, "passed": self.passed, "samples": self.samples,
                "tolerance": self.tolerance, "max_abs_diff": self.max_abs_diff, "failures": self.failures}


def verify_bundle(bundle: Bundle, model_files: list[str] | None = None) -> list[ModelCheck]:
    """Run the reference samples through each model and compare with reference.json (and the file's
    sha256 with the manifest's). One ModelCheck per model; a model that cannot load fails its check."""
    reference = bundle.reference()
    checks = []
    for model_file in model_files or bundle.tflite_files():
        check = ModelCheck(model_file)
        checks.append(check)
        try:
            classifier = Classifier(bundle, model_file)
        except BundleError as err:
            check.failures.append(str(err))
            continue
        check.key = classifier.key
        digest = hashlib.sha256(classifier.model_bytes).hexdigest()
        if digest != classifier.artifact.get("sha256"):
            check.failures.append(f"sha256 {digest[:12]}... differs from the manifest's "
                                  f"{str(classifier.artifact.get('sha256'))[:12]}...: the file was changed")
        expected_key = reference.get("compare_with", {}).get(check.key)
        check.tolerance = reference.get("tolerance", {}).get(check.key)
        if expected_key is None or check.tolerance is None:
            check.failures.append(f"reference.json has no expected outputs or tolerance for {check.key}")
            continue
        worst = 0.0
        for sample in reference.get("samples", []):
            name = sample["file"]
            try:
                pixels = classifier.decode(bundle.read(f"{REFERENCE_DIR}/{name}"))
            except (BundleError, PhotoError) as err:
                check.failures.append(f"{name}: {err}")
                continue
            first = classifier.probabilities(pixels)
            again = classifier.probabilities(pixels)
            expected = np.asarray(sample["expected"][expected_key], dtype=np.float32)
            difference = float(np.abs(first - expected).max())
            worst = max(worst, difference)
            check.samples += 1
            if not np.array_equal(first, again):
                check.failures.append(f"{name}: two runs gave different outputs (the model is not deterministic)")
            if difference > check.tolerance:
                check.failures.append(f"{name}: outputs differ from the reference by {difference:.4g} "
                                      f"(tolerance {check.tolerance:.4g})")
            if int(first.argmax()) != int(expected.argmax()):
                check.failures.append(f"{name}: top class {classifier.labels[int(first.argmax())]!r}, reference "
                                      f"{classifier.labels[int(expected.argmax())]!r}")
        check.max_abs_diff = worst
        if check.samples == 0 and not check.failures:
            check.failures.append("reference.json lists no samples")
    return checks


# --- command line ----------------------------------------------------------------------------------


def bar(percent: float, width: int = BAR_WIDTH) -> str:
    eighths = round(max(0.0, min(100.0, percent)) / 100 * width * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[rest] if rest else "")


def format_predictions(photo: str, model: dict, predictions: list[dict]) -> str:
    width = max(len(p["label"]) for p in predictions)
    lines = [f"{photo}: {model['name']} v{model['version']} ({model['format']}, on device)"]
    lines += [f"  {p['label']:<{width}}  {p['percent']:6.2f} %  {bar(p['percent'])}".rstrip() for p in predictions]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clients.ondevice",
        description="Classify photos on this machine with a pocketcnn mobile bundle, exactly as a phone app "
                    "does (LiteRT, no server, no TensorFlow), or run the bundle's self-check with --verify.",
        epilog="Exit status: 0 success; 1 a photo could not be read or the self-check failed; "
               "2 bad arguments or an unusable bundle.",
    )
    parser.add_argument("bundle", metavar="BUNDLE", help="mobile_bundle.zip, or the folder it was extracted into")
    parser.add_argument("photos", nargs="*", metavar="PHOTO", help="photos to classify")
    parser.add_argument("--model", metavar="FILE",
                        help=f"the .tflite in the bundle to use (default: {DEFAULT_MODEL}; with --verify: all)")
    parser.add_argument("--verify", action="store_true",
                        help="run the bundle's reference samples and compare with reference.json")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if not args.verify and not args.photos:
        print("error: give at least one PHOTO to classify, or --verify", file=sys.stderr)
        return 2
    try:
        bundle = Bundle(args.bundle)
    except (BundleError, OSError, zipfile.BadZipFile) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        if args.verify:
            return _verify(bundle, args)
        return _classify(bundle, args)
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        bundle.close()


def _verify(bundle: Bundle, args) -> int:
    checks = verify_bundle(bundle, [args.model] if args.model else None)
    if args.json:
        print(json.dumps({"passed": all(c.passed for c in checks), "models": [c.as_dict() for c in checks]}))
    else:
        for check in checks:
            status = "passed" if check.passed else "FAILED"
            detail = (f"{check.samples} samples, max diff {check.max_abs_diff:.2e} <= {check.tolerance:.2e}"
                      if check.passed else "")
            print(f"{check.model_file:<28} {status}  {detail}".rstrip())
            for failure in check.failures:
                print(f"    ! {failure}")
    return 0 if checks and all(c.passed for c in checks) else 1


def _classify(bundle: Bundle, args) -> int:
    classifier = Classifier(bundle, args.model or DEFAULT_MODEL)
    unreadable = 0
    for index, photo in enumerate(args.photos):
        try:
            predictions = classifier.classify(photo)
        except PhotoError as err:
            print(f"{photo}: {err}", file=sys.stderr)
            unreadable += 1
            continue
        if args.json:
            print(json.dumps({"photo": photo, "model": classifier.describe(), "predictions": predictions},
                             ensure_ascii=False))
        else:
            print(("\n" if index else "") + format_predictions(photo, classifier.describe(), predictions))
    return 1 if unreadable else 0


if __name__ == "__main__":
    sys.exit(main())
