"""The served model: which version, loaded how, proven how, replaced when.

A version is served only after
  1. its manifest validates and the artifact's sha256 matches the file on disk (no truncated or
     swapped file is ever run),
  2. export's graph check recorded no dropout or random op in the file, and
  3. the self-check passes: the reference images stored with the model, decoded by the same
     decode_image as every request, run several times, give bit-identical outputs that match the
     outputs recorded at export (Keras, training=False) within the artifact's tolerance, with the
     same top class. Dropout left on would fail the first comparison; a wrong or damaged model the second.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract import DEFAULT_MAX_PIXELS, InputRecipe, decode_image, input_recipe, input_size, ood, read_manifest
from contract.files import tree_sha256
from contract.manifest import ManifestError, ModelRepository, ModelVersion, held_out_accuracy
from contract.runtime import RuntimeLoadError, open_runner

log = logging.getLogger("pocketcnn.serve")


OOD_SCORE_TOLERANCE = 0.05  # out-of-distribution scores (threshold 1) the self-check allows off the recorded ones


class ModelLoadError(RuntimeError):
    """A version cannot be served; the message says why."""


class NotReady(RuntimeError):
    """No model is served yet (HTTP 503); the message says why."""


@dataclass
class ServedModel:
    name: str
    version: int
    path: Path
    format: str
    manifest: dict
    runner: object
    labels: list[str]
    height: int
    width: int
    channels: int
    recipe: InputRecipe = field(default_factory=InputRecipe)
    detector: ood.Detector | None = None   # None for versions exported before the detector (schema /1)
    ood_scale: ood.Scale | None = None     # this file's own scale of feature distances (from its validation images)
    self_check: dict = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)

    def decode(self, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, notes: dict | None = None) -> np.ndarray:
        """A photo -> this model's input, through its input recipe (ImageError for anything else); `notes`
        receives what the recipe measured (photo_doubt, for the out-of-distribution score)."""
        return decode_image(data, self.height, self.width, self.channels, max_pixels, recipe=self.recipe,
                            notes=notes)

    def classify(self, pixels: np.ndarray, photo_doubt: list[float] | None = None):
        """(N, H, W, C) uint8 -> probabilities (N, classes), and each image's out-of-distribution score (None
        for a version without a detector). photo_doubt: what the recipe measured on each photo."""
        if self.detector is None:
            return self.runner.predict(pixels), None
        probabilities, features = self.runner.predict_with_features(pixels)
        doubt = photo_doubt if self.recipe.name == "product_photo" else None
        return probabilities, ood.scores(self.detector.distance(features), self.ood_scale, doubt)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 -> (N, classes) float32 probabilities."""
        return self.runner.predict(pixels)

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "format": self.format}


def load_version(version: ModelVersion, fmt: str, self_check_runs: int = 5, threads: int = 1) -> ServedModel:
    """Load one version's artifact and prove it before it may answer a request."""
    try:
        manifest = read_manifest(version.path)
    except ManifestError as err:
        raise ModelLoadError(str(err)) from None
    artifact = manifest["artifacts"].get(fmt)
    if artifact is None:
        raise ModelLoadError(f"version {version.version} has no '{fmt}' file "
                             f"(it has: {', '.join(manifest['artifacts'])})")
    path = version.path / artifact["file"]
    if not path.resolve().is_relative_to(version.path.resolve()):
        raise ModelLoadError(f"the manifest names {artifact['file']!r} for '{fmt}', "
                             "outside the version's folder: refused")
    if not path.exists():
        raise ModelLoadError(f"{path} is missing")
    digest = tree_sha256(path)
    if digest != artifact["sha256"]:
        raise ModelLoadError(f"{path} does not match its manifest (sha256 {digest[:12]}..., expected "
                             f"{artifact['sha256'][:12]}...): the file is damaged or was replaced")
    if artifact.get("checks", {}).get("no_random_ops") is not True:
        raise ModelLoadError(f"export did not confirm that {artifact['file']} is free of dropout/random ops")
    detector, scale = load_detector(version.path, artifact)
    try:
        runner = open_runner(path, artifact["runtime"], threads, features=detector is not None)
    except RuntimeLoadError as err:
        raise ModelLoadError(str(err)) from None
    height, width, channels = input_size(manifest)
    model = ServedModel(manifest["name"], version.version, version.path, fmt, manifest, runner,
                        list(manifest["labels"]), height, width, channels, input_recipe(manifest), detector, scale)
    model.self_check = self_check(model, artifact, self_check_runs)
    if not model.self_check["passed"]:
        raise ModelLoadError(f"self-check failed for {manifest['name']} v{version.version} ({fmt}): "
                             f"{model.self_check['reason']}")
    return model


def load_detector(folder: Path, artifact: dict) -> tuple[ood.Detector | None, ood.Scale | None]:
    """The out-of-distribution detector the manifest names for this artifact, and the artifact's scale (none
    before schema /2); its file is checked against the manifest's sha256 like the model's."""
    entry = artifact.get("ood")
    if not entry:
        return None, None
    path = folder / entry["detector"]
    if not path.resolve().is_relative_to(folder.resolve()) or not path.is_file():
        raise ModelLoadError(f"the out-of-distribution detector {entry['detector']!r} is missing")
    if entry.get("sha256") and tree_sha256(path) != entry["sha256"]:
        raise ModelLoadError(f"{path} does not match its manifest: the detector is damaged or was replaced")
    try:
        return ood.load(path), ood.Scale(float(entry["center"]), float(entry["threshold"]))
    except (OSError, KeyError, ValueError) as err:
        raise ModelLoadError(f"the out-of-distribution detector {path} cannot be read ({err})") from None


def self_check(model: ServedModel, artifact: dict, runs: int) -> dict:
    """Run the reference images `runs` times; compare run to run, and with the recorded outputs."""
    reference_file = model.path / model.manifest.get("reference", {}).get("file", "reference/reference.json")
    result = {"passed": False, "runs": runs, "graph_no_random_ops": artifact["checks"].get("no_random_ops"),
              "graph_ops": artifact["checks"].get("ops", [])}
    try:
        reference = json.loads(reference_file.read_text(encoding="utf-8"))
        samples = reference["samples"]
        expected_key = reference["compare_with"][model.format]
        tolerance = float(reference["tolerance"][model.format])
        pixels = np.stack([model.decode((reference_file.parent / s["file"]).read_bytes()) for s in samples])
        expected = np.asarray([s["expected"][expected_key] for s in samples], dtype=np.float32)
    except (OSError, KeyError, ValueError, TypeError) as err:
        result["reason"] = f"reference samples unreadable ({err})"
        return result
    runs_seen = [model.classify(pixels) for _ in range(runs)]
    outputs = [probabilities for probabilities, _ in runs_seen]
    deterministic = all(np.array_equal(outputs[0], other) for other in outputs[1:])
    if runs_seen[0][1] is not None:  # the detector: the same scores every run, and those export recorded
        deterministic = deterministic and all(np.array_equal(runs_seen[0][1], s) for _, s in runs_seen[1:])
        recorded = [s.get("ood_score_at_export", {}).get(model.format) for s in samples]
        if None not in recorded:
            result["ood_max_abs_diff"] = float(np.abs(runs_seen[0][1] - np.asarray(recorded)).max())
    difference = float(np.abs(outputs[0] - expected).max())
    top_matches = int((outputs[0].argmax(axis=1) == expected.argmax(axis=1)).sum())
    result.update({
        "samples": len(samples), "compared_with": expected_key, "deterministic": deterministic,
        "max_abs_diff": difference, "tolerance": tolerance, "top1_matches": top_matches,
    })
    if not deterministic:
        result["reason"] = f"outputs differ between {runs} runs on the same input (dropout or randomness still active?)"
    elif difference > tolerance:
        result["reason"] = (f"outputs differ from the ones recorded at export by {difference:.3g} "
                            f"(tolerance {tolerance:.3g}): this is not the model that was exported")
    elif top_matches != len(samples):
        result["reason"] = f"top class differs on {len(samples) - top_matches} of {len(samples)} reference images"
    elif result.get("ood_max_abs_diff", 0.0) > OOD_SCORE_TOLERANCE:
        result["reason"] = (f"out-of-distribution scores differ from the ones recorded at export by "
                            f"{result['ood_max_abs_diff']:.3g} (tolerance {OOD_SCORE_TOLERANCE}): features or "
                            "detector are not the exported ones")
    else:
        result["passed"] = True
        result["reason"] = "ok"
    return result


def parse_policy(value) -> str | int:
    """'best', 'latest', or a pinned version number."""
    text = str(value).strip().lower()
    if text in ("best", "latest"):
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise ValueError(f"version policy must be 'best', 'latest' or a version number, not {value!r}")


def rank_versions(repository: ModelRepository, name: str, policy, fmt: str) -> list[ModelVersion]:
    """Candidate versions, most preferred first."""
    versions = repository.versions(name)
    if isinstance(policy, int):
        return [v for v in versions if v.version == policy]
    if policy == "latest":
        return sorted(versions, key=lambda v: v.version, reverse=True)

    def accuracy(version: ModelVersion) -> float:
        try:
            return held_out_accuracy(read_manifest(version.path), fmt)
        except ManifestError:
            return -1.0
    return sorted(versions, key=lambda v: (accuracy(v), v.version), reverse=True)


class ModelManager:
    """Holds the served model; a background thread loads it and picks up better versions.

    The swap is one reference assignment: requests in flight keep the model object they started with,
    new requests get the new one. A version that fails to load is remembered (until any of its
    files changes) and never replaces a working one."""

    def __init__(self, repository: Path, name: str, policy, fmt: str, poll_seconds: float = 5.0,
                 self_check_runs: int = 5, threads: int = 1, on_event=None):
        self.repository = ModelRepository(repository)
        self.requested_name = name
        self.policy = parse_policy(policy)
        self.format = fmt
        self.poll_seconds = poll_seconds
        self.self_check_runs = self_check_runs
        self.threads = threads
        self.on_event = on_event or (lambda kind, **fields: None)
        self.current: ServedModel | None = None
        self.state = "starting"
        self.reason = "the model is being loaded"
        self.failures: dict[str, str] = {}     # "name/version" -> reason
        self._failed_stamp: dict[str, tuple] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._first_attempt = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def wait_first_attempt(self, timeout: float = 30.0) -> bool:
        return self._first_attempt.wait(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as err:  # noqa: BLE001 - the watcher must outlive any surprise
                log.exception("model watcher error: %s", err)
            finally:
                self._first_attempt.set()
            if self.poll_seconds <= 0:
                return
            self._stop.wait(self.poll_seconds)

    # -- selection -----------------------------------------------------------------------------
    def model_name(self) -> str | None:
        if self.requested_name:
            return self.requested_name
        names = self.repository.names()
        return names[0] if len(names) == 1 else None

    def refresh(self) -> None:
        """Serve the most preferred version that loads and passes its self-check."""
        with self._lock:
            name = self.model_name()
            if name is None:
                names = self.repository.names()
                self._set_unready(
                    f"no model in {self.repository.root}; export one with: make export" if not names else
                    f"{self.repository.root} holds several models ({', '.join(names)}); "
                    "set POCKETCNN_MODEL_NAME to choose one")
                return
            candidates = rank_versions(self.repository, name, self.policy, self.format)
            if not candidates:
                what = f"version {self.policy}" if isinstance(self.policy, int) else "no published version"
                self._set_unready(f"{what} of '{name}' in {self.repository.root}")
                return
            current = self.current
            for candidate in candidates:
                if current is not None and current.name == name and candidate.version == current.version:
                    return  # the preferred loadable version is already served
                key = f"{name}/{candidate.version}"
                stamp = _folder_stamp(candidate.path)
                if key in self.failures and self._failed_stamp.get(key) == stamp:
                    continue  # known broken, unchanged since
                try:
                    model = load_version(candidate, self.format, self.self_check_runs, self.threads)
                except ModelLoadError as err:
                    self.failures[key] = str(err)
                    self._failed_stamp[key] = stamp
                    log.error("not serving %s: %s", key, err)
                    self.on_event("load_failed", name=name, version=candidate.version, reason=str(err))
                    continue
                self.failures.pop(key, None)
                previous = self.current
                self.current = model
                self.state, self.reason = "ready", "ok"
                log.info("serving %s v%d (%s); self-check: %s", name, model.version, self.format,
                         json.dumps({k: v for k, v in model.self_check.items() if k != "graph_ops"}))
                self.on_event("loaded", name=name, version=model.version, previous=previous, fmt=self.format)
                return
            if self.current is None:
                reasons = "; ".join(f"v{k.split('/')[1]}: {r}" for k, r in self.failures.items() if k.startswith(name))
                self._set_unready(f"no version of '{name}' passed its checks ({reasons})")

    def _set_unready(self, reason: str) -> None:
        if self.current is None:
            if (self.state, self.reason) != ("unready", reason):
                log.warning("not ready: %s", reason)
            self.state, self.reason = "unready", reason

    @property
    def ready(self) -> bool:
        return self.current is not None

    def served(self) -> ServedModel:
        """The model to answer a request with (one reference for the whole request), or NotReady."""
        model = self.current
        if model is None:
            raise NotReady(self.reason)
        return model


def _folder_stamp(path: Path) -> tuple:
    """Name, size and modification time of every file in a version folder. A version that failed is
    tried again when any of its files changes: a folder copied in by hand (`cp -r`) can be seen while
    its model file is still being written, and must load once the copy is complete."""
    stamp = []
    try:
        for file in sorted(path.rglob("*")):
            try:
                info = file.stat()
            except OSError:
                continue  # removed while we looked
            stamp.append((str(file.relative_to(path)), info.st_size, info.st_mtime_ns))
    except OSError:
        pass
    return tuple(stamp)
