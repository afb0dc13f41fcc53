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

PROBABILITIES = "probabilities"
FEATURES = "features"  # the activations the classifier's last layer reads: the out-of-distribution detector's input


class RuntimeLoadError(RuntimeError):
    """The artifact cannot be loaded by its runtime (missing, damaged, or the runtime is not installed)."""


class LiteRTRunner:
    """One LiteRT interpreter. Interpreters are not thread-safe: calls are serialized by a lock.

    With features=True it also reads the features: the input of the fully connected layer whose output the
    softmax reads, an intermediate tensor of the file (the mobile files keep one output, as MediaPipe wants it).
    LiteRT keeps intermediate tensors readable only with experimental_preserve_all_tensors, at the price of
    not reusing their memory (a few hundred kB for these models).

    A greyscale model's RGB-input file (tflite_int8_rgb...) given greyscale pixels gets the same value in R, G
    and B: its luma step gives them back exactly, so it answers as the greyscale file does."""

    runtime = "litert"

    def __init__(self, path: str | Path, threads: int = 1, features: bool = False):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:
            raise RuntimeLoadError(f"LiteRT is not installed (pip install ai-edge-litert): {err}") from None
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads,
                                           experimental_preserve_all_tensors=features)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError, OSError) as err:
            raise RuntimeLoadError(f"LiteRT cannot load {path}: {err}") from None
        self._features = None
        if features:
            index = tflite_features_tensor(Path(path).read_bytes())
            details = next(t for t in self.interpreter.get_tensor_details() if t["index"] == index)
            self._features = (index, _quantization(details))
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self.input_dtype = np.dtype(self._input["dtype"])
        self.output_dtype = np.dtype(self._output["dtype"])
        self.input_quantization = _quantization(self._input)
        self.output_quantization = _quantization(self._output)
        self.input_shape = tuple(int(v) for v in self._input["shape"][1:])
        self._lock = threading.Lock()

    def _inputs(self, images: np.ndarray) -> np.ndarray:
        if images.shape[-1] == 1 and self.input_shape[-1] == 3:
            images = np.repeat(images, 3, axis=-1)
        return quantize(images, self.input_dtype, self.input_quantization)

    def predict(self, images: np.ndarray) -> np.ndarray:
        inputs = self._inputs(images)
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

    def predict_with_features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._features is None:
            raise RuntimeLoadError("this runner was opened without features=True")
        inputs = self._inputs(images)
        input_index, output_index = self._input["index"], self._output["index"]
        feature_index, feature_quantization = self._features
        probabilities, features = [], []
        with self._lock:
            for image in inputs:
                self.interpreter.set_tensor(input_index, image[np.newaxis])
                self.interpreter.invoke()
                probabilities.append(self.interpreter.get_tensor(output_index)[0])
                features.append(self.interpreter.get_tensor(feature_index).reshape(-1))
        return (dequantize(np.stack(probabilities), self.output_quantization),
                dequantize(np.stack(features), feature_quantization))

    def describe(self) -> dict:
        return {
            "input": _tensor_info(self._input, self.input_quantization),
            "output": _tensor_info(self._output, self.output_quantization),
        }


class OnnxRunner:
    """ONNX Runtime. The file's second output, when it has one, is the features (export writes it)."""

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 1, features: bool = False):
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
        outputs = self.session.get_outputs()
        self._output = next((o for o in outputs if o.name == PROBABILITIES), outputs[0])
        self.input_shape = tuple(self._input.shape[1:])
        names = [o.name for o in outputs]
        if features and FEATURES not in names:
            raise RuntimeLoadError(f"{path} has no '{FEATURES}' output (its outputs: {', '.join(names)})")

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([self._output.name], {self._input.name: images.astype(np.float32)})[0]

    def predict_with_features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities, features = self.session.run([self._output.name, FEATURES],
                                                   {self._input.name: images.astype(np.float32)})
        return probabilities, features.reshape(len(images), -1)

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

    def __init__(self, path: Path, features: bool = False):
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
        if features and FEATURES not in self.loaded.signatures:
            raise RuntimeLoadError(f"{path} has no '{FEATURES}' signature")

    def predict(self, images: np.ndarray) -> np.ndarray:
        out = self.function(**{self.input_name: self._tf.constant(images.astype(np.float32))})
        return out[self.output_name].numpy()

    def predict_with_features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tensor = self._tf.constant(images.astype(np.float32))
        features = self.loaded.signatures[FEATURES](**{self.input_name: tensor})[FEATURES].numpy()
        return self.predict(images), features.reshape(len(images), -1)

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


def open_runner(path: str | Path, runtime: str, threads: int = 1, features: bool = False):
    """A runner for the file at `path`; with features=True it also has predict_with_features()."""
    path = Path(path)
    if not path.exists():
        raise RuntimeLoadError(f"{path} does not exist")
    if runtime == "litert":
        return LiteRTRunner(path, threads, features)
    if runtime == "onnxruntime":
        return OnnxRunner(path, threads, features)
    if runtime == "tensorflow":
        return SavedModelRunner(path, features)
    raise RuntimeLoadError(f"unknown runtime '{runtime}' (litert, onnxruntime or tensorflow)")


def tflite_features_tensor(flatbuffer: bytes) -> int:
    """Index of the features tensor in a .tflite file: the input of the FULLY_CONNECTED operator whose output
    the SOFTMAX reads (the classifier's last layer)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    graph = model.Subgraphs(0)
    names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    producer, softmax_input = {}, None
    for i in range(graph.OperatorsLength()):
        operator = graph.Operators(i)
        code = model.OperatorCodes(operator.OpcodeIndex())
        kind = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        for output in operator.OutputsAsNumpy():
            producer[int(output)] = (kind, operator)
        if kind == "SOFTMAX":
            softmax_input = int(operator.InputsAsNumpy()[0])
    kind, operator = producer.get(softmax_input, (None, None))
    while kind in ("QUANTIZE", "DEQUANTIZE", "RESHAPE"):  # int8 files may requantize before the softmax
        kind, operator = producer.get(int(operator.InputsAsNumpy()[0]), (None, None))
    if kind != "FULLY_CONNECTED":
        raise RuntimeLoadError("the .tflite file has no softmax after a fully connected layer: no features to read")
    return int(operator.InputsAsNumpy()[0])


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
