"""Every setting of the service in one place: name, default, meaning. gunicorn's configuration
(serve/gunicorn_conf.py), its worker (serve/gunicorn_worker.py) and the Flask app (create_app) all read
them from here, from environment variables named POCKETCNN_<NAME>; create_app(test_config) takes the
same names without the prefix. The README's settings table is this table (`python -m serve.settings`
prints it; a test checks that they agree).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

from contract import DEFAULT_MAX_PIXELS
from contract.formats import FORMATS
from contract.manifest import is_valid_model_name
from contract.options import option

PREFIX = "POCKETCNN_"
DEFAULT_FORMAT = "tflite_dynamic"


class SettingsError(ValueError):
    """A setting has a value the service cannot work with; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    model_repository: str = option("models", "where export publishes (the model repository)")
    model_name: str = option("", "the model `/predict` answers with when no `?model=` is given (every model in the "
                                 "repository is served by name); empty: the first by name")
    model_version_policy: str = option("best", "`best` (held-out accuracy), `latest`, or a version number; a model's "
                                               "own `serving.json` overrides it")
    # Measured here (BENCHMARKS.md): int8 weights ran the old default model (two convs per block) 3-4x faster
    # than float32, and dynamic range keeps the closest answers of the fast formats; with today's smaller model
    # the formats serve within noise of each other. tflite_float32 or onnx give the trained model's percentages
    # bit for bit.
    model_format: str = option(DEFAULT_FORMAT, "any exported format; `savedmodel` needs TensorFlow installed")
    max_content_length: int = option(16 * 1024 * 1024, "bytes per request (413 beyond)")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "pixels per image, read from the header before decoding (413)")
    max_images: int = option(32, "images per request (413)")
    poll_seconds: float = option(5.0, "how often to look for a better version (0: never)")
    self_check_runs: int = option(5, "runs of the reference images at start-up that must be identical")
    inference_threads: int = option(1, "intra-op threads per inference; workers x this should not exceed the cores")
    load_in_background: bool = option(True, "load the model in a thread after the fork "
                                            "(false: before create_app returns)")
    first_load_wait_seconds: float = option(20.0, "how long a new worker waits for its first load before taking "
                                                  "connections (below request_timeout)")
    web_runtime: str = option("", "folder of onnxruntime-web's files for the page's on-device mode; empty: "
                                  "web/node_modules/onnxruntime-web/dist (make web)")
    bind: str = option("127.0.0.1:8000", "address (the container uses `0.0.0.0:8000`)")
    workers: int = option(0, "gunicorn worker processes; 0: one per core")
    threads: int = option(4, "threads per worker (they overlap network I/O)")
    request_timeout: int = option(30, "seconds before a stuck worker is replaced")
    read_timeout: float = option(10.0, "seconds without a byte from a client before its connection is closed")
    drain_seconds: float = option(0.0, "on SIGTERM, seconds to go on serving while `/readyz` answers 503, so that a "
                                       "load balancer takes the instance out first (then a graceful stop); 0: stop "
                                       "at once")
    log_level: str = option("info", "gunicorn's log level: debug, info, warning, error")
    access_log: str = option("", "access log file (`-`: standard output); empty: off, it costs throughput")

    @classmethod
    def from_env(cls, environ=None, overrides: dict | None = None) -> "Settings":
        """Defaults, then POCKETCNN_* variables, then `overrides` (keys in upper case, without the prefix)."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            variable = PREFIX + f.name.upper()
            if variable in environ:
                values[f.name] = _parse(environ[variable], f.default, variable)
        for key, value in (overrides or {}).items():
            name = key.lower()
            if name not in {f.name for f in fields(cls)}:
                raise SettingsError(f"unknown setting {key!r}; the settings are: "
                                    f"{', '.join(f.name.upper() for f in fields(cls))}")
            default = next(f.default for f in fields(cls) if f.name == name)
            values[name] = (_parse(value, default, key) if isinstance(value, str) and not isinstance(default, str)
                            else value)
        settings = replace(cls(), **values)
        settings.check()
        return settings

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    def check(self) -> None:
        """Refuse settings that cannot work: a worker that fails here makes gunicorn exit with the message."""
        from serve.model import parse_policy

        try:
            parse_policy(self.model_version_policy)
        except ValueError as err:
            raise SettingsError(f"{PREFIX}MODEL_VERSION_POLICY: {err}") from None
        if self.model_format not in FORMATS:
            raise SettingsError(f"{PREFIX}MODEL_FORMAT must be one of {', '.join(FORMATS)}, not {self.model_format!r}")
        if self.model_name and not is_valid_model_name(self.model_name):
            raise SettingsError(f"{PREFIX}MODEL_NAME {self.model_name!r} is not a valid model name")
        for name in ("max_content_length", "max_pixels", "max_images", "self_check_runs", "inference_threads",
                     "threads", "request_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SettingsError(f"{PREFIX}{name.upper()} must be a positive integer, not {value!r}")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise SettingsError(f"{PREFIX}WORKERS must be 0 (one per core) or a positive integer, not {self.workers!r}")
        for name in ("poll_seconds", "read_timeout", "first_load_wait_seconds", "drain_seconds"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{PREFIX}{name.upper()} must not be negative")
        if self.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise SettingsError(f"{PREFIX}LOG_LEVEL must be debug, info, warning, error or critical, "
                                f"not {self.log_level!r}")


def _parse(text: str, default, where: str):
    """An environment variable's text as the type of the setting's default."""
    text = text.strip()
    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        kind = {bool: "true or false", int: "a whole number", float: "a number"}[type(default)]
        raise SettingsError(f"{where} must be {kind}, not {text!r}") from None
    return text


def markdown_table() -> str:
    """The README's settings table."""
    lines = ["| variable | default | what |", "| --- | --- | --- |"]
    for f in fields(Settings):
        default = f.default
        if default == "":
            shown = "(empty)"
        elif f.name == "max_content_length":
            shown = "`16777216` (16 MiB)"
        else:
            shown = f"`{str(default).lower() if isinstance(default, bool) else default}`"
        lines.append(f"| `{PREFIX}{f.name.upper()}` | {shown} | {f.metadata['help']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
