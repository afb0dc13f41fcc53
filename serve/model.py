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
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract import DEFAULT_MAX_PIXELS, InputRecipe, decode_image, input_recipe, input_size, ood, read_manifest
from contract.files import tree_sha256
from contract.manifest import ManifestError, ModelRepository, ModelVersion, held_out_accuracy, is_valid_model_name
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
    # Served under its folder's name (models/<name>/): that is the name every route and the repository use.
    model = ServedModel(version.name, version.version, version.path, fmt, manifest, runner,
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


SERVING_CONFIG_FILE = "serving.json"  # models/<name>/serving.json: the model's own version policy and labels
_LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ModelNotFound(LookupError):
    """No model, version or label of that name is served here (HTTP 404); the message says which."""


class UnknownLabel(LookupError):
    """The model has no version label of that name (TF Serving answers it 400, "Unrecognized servable version
    label")."""


@dataclass(frozen=True)
class ServingConfig:
    """What models/<name>/serving.json says (every key optional):

        {"version_policy": "latest", "version_labels": {"stable": 1, "canary": 2}}

    version_policy overrides POCKETCNN_MODEL_VERSION_POLICY for this model; version_labels name versions, as
    TF Serving's model config does (GET/POST /v1/models/<name>/labels/<label>...). A labelled version is loaded
    and self-checked beside the one the policy chooses."""

    policy: str | int | None = None
    labels: tuple[tuple[str, int], ...] = ()

    @classmethod
    def read(cls, folder: Path) -> "ServingConfig":
        path = folder / SERVING_CONFIG_FILE
        if not path.is_file():
            return cls()
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ValueError(f"{path} cannot be read ({err})") from None
        if not isinstance(document, dict) or set(document) - {"version_policy", "version_labels"}:
            raise ValueError(f"{path} must be a JSON object with only 'version_policy' and 'version_labels'")
        policy = document.get("version_policy")
        try:
            policy = None if policy is None else parse_policy(policy)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        labels = document.get("version_labels", {})
        if not isinstance(labels, dict) or not all(
                isinstance(k, str) and _LABEL_PATTERN.match(k) and isinstance(v, int) and not isinstance(v, bool)
                and v > 0 for k, v in labels.items()):
            raise ValueError(f"{path}: version_labels must map label names (letters, digits, '_', '.', '-') to "
                             "version numbers")
        return cls(policy, tuple(sorted(labels.items())))


class NamedModel:
    """One model of the repository (models/<name>/): the version its policy prefers, the versions its labels name,
    each loaded and self-checked on its own, and the versions refused and why.

    The swap is one reference assignment: requests in flight keep the model object they started with, new
    requests get the new one. A version that fails to load is remembered (until any of its files changes) and
    never replaces a working one."""

    def __init__(self, repository: ModelRepository, name: str, policy, fmt: str, self_check_runs: int = 5,
                 threads: int = 1, on_event=None):
        self.repository = repository
        self.name = name
        self.default_policy = parse_policy(policy)
        self.policy = self.default_policy
        self.format = fmt
        self.self_check_runs = self_check_runs
        self.threads = threads
        self.on_event = on_event or (lambda kind, **fields: None)
        self.current: ServedModel | None = None        # the version the policy chose
        self.loaded: dict[int, ServedModel] = {}       # every version served: the current one and labelled ones
        self.labels: dict[str, int] = {}
        self.state = "starting"                        # starting, ready, refused (no version loads), empty
        self.reason = "the model is being loaded"
        self.failures: dict[int, str] = {}             # version -> why it is not served
        self._failed_stamp: dict[int, tuple] = {}
        self.present: list[int] = []                   # every published version, oldest first

    def refresh(self) -> None:
        try:
            config = ServingConfig.read(self.repository.model_dir(self.name))
        except ValueError as err:
            log.error("not reading the serving configuration of %s: %s", self.name, err)
            config = ServingConfig(None, tuple(sorted(self.labels.items())))  # keep what was in force
            if self.current is None:
                self._set_unready("refused", str(err))
                return
        self.policy = config.policy if config.policy is not None else self.default_policy
        versions = self.repository.versions(self.name)
        self.present = [v.version for v in versions]
        by_number = {v.version: v for v in versions}
        current = self._choose(rank_versions(self.repository, self.name, self.policy, self.format))
        if current is None and self.current is not None:
            current = self.current  # nothing it prefers loads (or its folder went): keep serving what works
        labelled = {}
        for label, number in config.labels:
            if current is not None and number == current.version:
                labelled[label] = number
            elif number in by_number and self._load(by_number[number], keep=self.loaded.get(number)) is not None:
                labelled[label] = number
        wanted = {m.version: m for m in ([current] if current else [])}
        for number in labelled.values():
            wanted.setdefault(number, self.loaded.get(number) or self._loaded_now.get(number))
        previous, self.current = self.current, current
        self.labels = {label: number for label, number in config.labels}
        for number in self.loaded:
            if number not in wanted:
                self.on_event("unloaded", name=self.name, version=number, fmt=self.format)
        added = [number for number in wanted if number not in self.loaded]
        self.loaded = wanted
        for number in added:
            replaced = previous if (current is not None and number == current.version and previous is not None
                                    and previous.version not in wanted) else None
            self.on_event("loaded", name=self.name, version=number, previous=replaced, fmt=self.format)
        if current is not None:
            self.state, self.reason = "ready", "ok"
        elif not versions:
            what = f"version {self.policy}" if isinstance(self.policy, int) else "no published version"
            self._set_unready("empty", f"{what} of '{self.name}' in {self.repository.root}")
        elif isinstance(self.policy, int) and self.policy not in by_number:
            self._set_unready("empty", f"version {self.policy} of '{self.name}' in {self.repository.root}")
        else:
            reasons = "; ".join(f"v{v}: {r}" for v, r in sorted(self.failures.items()))
            self._set_unready("refused", f"no version of '{self.name}' passed its checks ({reasons})")

    def _choose(self, candidates: list[ModelVersion]) -> ServedModel | None:
        """The most preferred candidate that loads and passes its self-check (the served one if it still leads)."""
        self._loaded_now: dict[int, ServedModel] = {}
        for candidate in candidates:
            if self.current is not None and candidate.version == self.current.version:
                return self.current
            model = self._load(candidate, keep=self.loaded.get(candidate.version))
            if model is not None:
                return model
        return None

    def _load(self, candidate: ModelVersion, keep: ServedModel | None = None) -> ServedModel | None:
        if keep is not None:
            return keep
        if candidate.version in self._loaded_now:
            return self._loaded_now[candidate.version]
        key = f"{self.name}/{candidate.version}"
        stamp = _folder_stamp(candidate.path)
        if candidate.version in self.failures and self._failed_stamp.get(candidate.version) == stamp:
            return None  # known broken, unchanged since
        try:
            model = load_version(candidate, self.format, self.self_check_runs, self.threads)
        except ModelLoadError as err:
            self.failures[candidate.version] = str(err)
            self._failed_stamp[candidate.version] = stamp
            log.error("not serving %s: %s", key, err)
            self.on_event("load_failed", name=self.name, version=candidate.version, reason=str(err))
            return None
        self.failures.pop(candidate.version, None)
        self._failed_stamp.pop(candidate.version, None)
        self._loaded_now[candidate.version] = model
        log.info("serving %s v%d (%s); self-check: %s", self.name, model.version, self.format,
                 json.dumps({k: v for k, v in model.self_check.items() if k != "graph_ops"}))
        return model

    def _set_unready(self, state: str, reason: str) -> None:
        if self.current is None:
            if (self.state, self.reason) != (state, reason):
                log.warning("not ready: %s", reason)
            self.state, self.reason = state, reason

    def version(self, number: int | None = None, label: str | None = None) -> ServedModel:
        """The version to answer with: the policy's, a pinned one or a labelled one (NotReady, ModelNotFound or
        UnknownLabel otherwise)."""
        if label is not None:
            if label not in self.labels:
                raise UnknownLabel(f"Unrecognized servable version label '{label}' of '{self.name}'"
                                   + (f"; its labels are {', '.join(sorted(self.labels))}" if self.labels else
                                      f"; it has no labels ({self.name}/{SERVING_CONFIG_FILE} names them)"))
            number = self.labels[label]
        if number is None:
            model = self.current
            if model is None:
                raise NotReady(self.reason)
            return model
        model = self.loaded.get(number)
        if model is not None:
            return model
        if number in self.failures:
            raise NotReady(f"version {number} of '{self.name}' is refused: {self.failures[number]}")
        served = ", ".join(str(v) for v in sorted(self.loaded)) or "none"
        raise ModelNotFound(f"Version {number} of '{self.name}' is not served (served: {served})")

    def version_states(self) -> list[dict]:
        """Every published version: AVAILABLE (served), LOADING (not tried yet) or END (refused, or not chosen by
        the policy or a label), as TF Serving reports them."""
        states = []
        for number in sorted(set(self.present) | set(self.loaded), reverse=True):
            if number in self.loaded:
                states.append({"version": number, "state": "AVAILABLE", "error": None})
            elif number in self.failures:
                states.append({"version": number, "state": "END", "error": self.failures[number]})
            elif self.state == "starting":
                states.append({"version": number, "state": "LOADING", "error": None})
            else:
                states.append({"version": number, "state": "END", "error": None})
        return states


class ModelManager:
    """Every model of the repository, each a NamedModel with its own policy, labels, self-checks and pick-up; one
    background thread looks for new models and versions. `current` is the default model's served version (what
    /predict answers with when no ?model= is given).

    Ready (GET /readyz) when at least one model is served and every model that has a loadable version serves one:
    a model whose every version was refused, or that has none, does not hold the others back."""

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
        self.models: dict[str, NamedModel] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._first_attempt = threading.Event()
        self._refreshed = False

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

    def refresh(self) -> None:
        """Look for new models and versions; each model serves the most preferred version that passes its checks."""
        with self._lock:
            names = self.repository.names()
            for name in names:
                if name not in self.models:
                    self.models[name] = NamedModel(self.repository, name, self.policy, self.format,
                                                   self.self_check_runs, self.threads, self.on_event)
            for name in list(self.models):
                if name not in names and self.models[name].current is None:
                    del self.models[name]  # removed from the repository (a served one keeps serving)
            for name in names:
                try:
                    self.models[name].refresh()
                except Exception as err:  # noqa: BLE001 - one model's surprise must not stop the others
                    log.exception("error while refreshing %s: %s", name, err)
                    if self.models[name].current is None:
                        self.models[name]._set_unready("refused", f"error while loading: {err}")
            self._refreshed = True

    # -- selection -----------------------------------------------------------------------------
    def default_name(self) -> str | None:
        """The model /predict serves without ?model=: POCKETCNN_MODEL_NAME, else the first by name."""
        if self.requested_name:
            return self.requested_name
        names = sorted(self.models)
        return names[0] if names else None

    def model(self, name: str) -> NamedModel:
        found = self.models.get(name)
        if found is None:
            shown = name if is_valid_model_name(name) else "(invalid name)"
            served = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"Model '{shown}' is not served here (models: {served})")
        return found

    @property
    def default(self) -> NamedModel | None:
        name = self.default_name()
        return self.models.get(name) if name else None

    @property
    def current(self) -> ServedModel | None:
        default = self.default
        return default.current if default is not None else None

    @property
    def reason(self) -> str:
        if not self._refreshed:
            return "the model is being loaded"
        default = self.default
        if self.requested_name and default is None:
            return f"no model '{self.requested_name}' in {self.repository.root}"
        if default is None:
            return f"no model in {self.repository.root}; export one with: make export"
        return default.reason

    @property
    def failures(self) -> dict[str, str]:
        """Every refused version of every model, "name/version" -> why."""
        return {f"{name}/{number}": reason for name, model in sorted(self.models.items())
                for number, reason in sorted(model.failures.items())}

    @property
    def ready(self) -> bool:
        return self.current is not None

    def all_ready(self) -> tuple[bool, str]:
        """(ready, why not): at least one model served, and every model that has a loadable version serves one."""
        if not self._refreshed:
            return False, "the models are being loaded"
        models = list(self.models.values())
        if not any(m.current is not None for m in models):
            if not models:
                return False, f"no model in {self.repository.root}; export one with: make export"
            return False, "; ".join(f"{m.name}: {m.reason}" for m in models)
        waiting = [m for m in models if m.current is None and m.state == "starting"]
        if waiting:
            return False, "; ".join(f"{m.name}: {m.reason}" for m in waiting)
        return True, "ok"

    def served(self, name: str | None = None) -> ServedModel:
        """The model to answer a request with (one reference for the whole request), or NotReady/ModelNotFound.
        Without a name: the default model."""
        if name is None:
            default = self.default
            if default is None:
                raise NotReady(self.reason)
            return default.version()
        return self.model(name).version()


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
