"""export: best.keras -> SavedModel, TFLite (float and quantized) and ONNX, each proven, published as a version."""
