"""Run an exported artifact the way servers and phones do: LiteRT for .tflite, ONNX Runtime for .onnx
(and TensorFlow for a SavedModel, only where TensorFlow is installed).

Export's parity checks and the service both use these runners, so the service runs exactly the code
path that export proved. TensorFlow is imported only by the SavedModel runner. Input: uint8 pixels
(N, H, W, C) from decode_image; output: float32 probabilities (N, classes). Quantized models get their
input quantized and their output dequantized with the scale and zero-point stored in the model file.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np


class RuntimeLoadError(RuntimeError):
    """The artifact cannot be loaded by its runtime (missing, damaged, or the runtime is not installed)."""


class LiteRTRunner:
    """One LiteRT interpreter. Interpreters are not thread-safe: calls are serialized by a lock."""

    runtime = "litert"

    def __init__(self, path: str | Path, threads: int = 1):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:
            raise RuntimeLoadError(f"LiteRT is not installed (pip install ai-edge-litert): {err}") from None
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError, OSError) as err:
            raise RuntimeLoadError(f"LiteRT cannot load {path}: {err}") from None
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self.input_dtype = np.dtype(self._input["dtype"])
        self.output_dtype = np.dtype(self._output["dtype"])
        self.input_quantization = _quantization(self._input)
        self.output_quantization = _quantization(self._output)
        self.input_shape = tuple(int(v) for v in self._input["shape"][1:])
        self._lock = threading.Lock()

    def predict(self, images: np.ndarray) -> np.ndarray:
        inputs = quantize(images, self.input_dtype, self.input_quantization)
        input_index, output_index = self._input["index"], self._output["index"]
        with self._lock:
            if len(inputs) == 1:  # the common case: one photo per request, no stacking
                self.interpreter.set_tensor(input_index, inputs)
                self.interpreter.invoke()
                return dequantize(self.interpreter.get_tensor(output_index), self.output_quantization)
            results = []
            for image in inputs:
                self.interpreter.set_tensor(input_index, image[np.newaxis])
                self.interpreter.invoke()
                results.append(self.interpreter.get_tensor(output_index)[0])  # get_tensor returns a copy
        return dequantize(np.stack(results), self.output_quantization)

    def describe(self) -> dict:
        return {
            "input": _tensor_info(self._input, self.input_quantization),
            "output": _tensor_info(self._output, self.output_quantization),
        }


class OnnxRunner:
    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 1):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise RuntimeLoadError(f"ONNX Runtime is not installed (pip install onnxruntime): {err}") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own untyped errors for bad files
            raise RuntimeLoadError(f"ONNX Runtime cannot load {path}: {err}") from None
        self._input = self.session.get_inputs()[0]
        self._output = self.session.get_outputs()[0]
        self.input_shape = tuple(self._input.shape[1:])

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([self._output.name], {self._input.name: images.astype(np.float32)})[0]

    def describe(self) -> dict:
        return {
            "input": {"name": self._input.name, "dtype": "float32", "shape": _onnx_shape(self._input.shape),
                      "quantization": None},
            "output": {"name": self._output.name, "dtype": "float32", "shape": _onnx_shape(self._output.shape),
                       "quantization": None},
        }


class SavedModelRunner:
    """TensorFlow's own loader for the SavedModel (the runtime TF Serving uses)."""

    runtime = "tensorflow"

    def __init__(self, path: Path):
        try:
            import tensorflow as tf
        except ImportError:
            raise RuntimeLoadError("serving a SavedModel needs TensorFlow, which the serving install leaves out "
                                   "(pip install tensorflow, or serve the onnx or tflite files)") from None
        self._tf = tf
        try:
            self.loaded = tf.saved_model.load(str(path))
        except (OSError, ValueError, RuntimeError) as err:
            raise RuntimeLoadError(f"TensorFlow cannot load the SavedModel {path}: {err}") from None
        self.function = self.loaded.signatures["serving_default"]
        self.input_name = next(iter(self.function.structured_input_signature[1]))
        self.output_name = next(iter(self.function.structured_outputs))

    def predict(self, images: np.ndarray) -> np.ndarray:
        out = self.function(**{self.input_name: self._tf.constant(images.astype(np.float32))})
        return out[self.output_name].numpy()

    def describe(self) -> dict:
        spec = self.function.structured_input_signature[1][self.input_name]
        out = self.function.structured_outputs[self.output_name]
        return {
            "input": {"name": self.input_name, "dtype": "float32", "shape": [-1, *spec.shape[1:]],
                      "quantization": None},
            "output": {"name": self.output_name, "dtype": "float32", "shape": [-1, *out.shape[1:]],
                       "quantization": None},
        }

    def op_types(self) -> set[str]:
        graph = self.function.graph.as_graph_def()
        ops = {node.op for node in graph.node}
        for function in graph.library.function:
            ops |= {node.op for node in function.node_def}
        return ops


def open_runner(path: str | Path, runtime: str, threads: int = 1):
    path = Path(path)
    if not path.exists():
        raise RuntimeLoadError(f"{path} does not exist")
    if runtime == "litert":
        return LiteRTRunner(path, threads)
    if runtime == "onnxruntime":
        return OnnxRunner(path, threads)
    if runtime == "tensorflow":
        return SavedModelRunner(path)
    raise RuntimeLoadError(f"unknown runtime '{runtime}' (litert, onnxruntime or tensorflow)")


def quantize(images: np.ndarray, dtype: np.dtype, quantization: dict | None) -> np.ndarray:
    """Raw 0-255 pixels -> the model's input type. Identity for uint8 models with scale 1, zero-point 0."""
    if quantization is None:
        return images.astype(dtype, copy=False)
    scale, zero_point = quantization["scale"], quantization["zero_point"]
    if dtype == np.uint8 and images.dtype == np.uint8 and scale == 1.0 and zero_point == 0:
        return images
    info = np.iinfo(dtype)
    values = np.round(images.astype(np.float32) / scale + zero_point)
    return np.clip(values, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, quantization: dict | None) -> np.ndarray:
    if quantization is None:
        return values.astype(np.float32, copy=False)
    return (values.astype(np.float32) - quantization["zero_point"]) * quantization["scale"]


def _quantization(details: dict) -> dict | None:
    scale, zero_point = details["quantization"]
    if scale == 0.0:
        return None
    return {"scale": float(scale), "zero_point": int(zero_point)}


def _tensor_info(details: dict, quantization: dict | None) -> dict:
    return {
        "name": details["name"],
        "dtype": np.dtype(details["dtype"]).name,
        "shape": [int(v) for v in details["shape_signature"]] if "shape_signature" in details else
                 [int(v) for v in details["shape"]],
        "quantization": quantization,
    }


def _onnx_shape(shape) -> list:
    return [v if isinstance(v, int) else str(v) for v in shape]
