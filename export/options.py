"""Every export option and release gate, with its default: `python -m export --help` is generated from here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from contract.formats import Format, parse_formats
from contract.options import option

GATES = "gates (a file that misses one fails the export, exit 3)"
FINE_TUNING = "fine-tuning for --qat and --prune (on the run's training sample)"


@dataclass
class ExportOptions:
    run: Path = Path("runs/latest")  # the positional argument: a run folder, a runs directory or runs/latest
    models_dir: str = option("models", "model repository to publish into")
    name: str = option("", "model name (default: the run's dataset, e.g. fashion_mnist)")
    formats: str = option("", "formats to export, comma-separated; 'all' for every one (default: the release set "
                              "listed below)", metavar="F,F,...")
    qat: bool = option(False, "add quantization-aware-trained int8 (tfmot, separate process)", flag=True)
    prune: bool = option(False, "add magnitude-pruned int8 (tfmot, separate process)", flag=True)
    calibration_images: int = option(300, "training images for int8 calibration")
    test_limit: int = option(0, "check on only the first N held-out images (0 = all)")
    opset: int = option(17, "ONNX opset")
    temperature: float = option(0.0, "the calibration temperature; 0 = fit it on the run's validation images "
                                     "(another value is for experiments: the calibration gate still applies)")
    # A small learning rate keeps the fine-tuned model close to the trained one: measured on the benchmark
    # model, QAT at 2e-5 for 3 epochs beats post-training int8, and pruning at 5e-5 for 4 epochs loses 0.4
    # points (at 5e-4, 1.3). See BENCHMARKS.md.
    qat_epochs: int = option(3, "QAT fine-tune epochs", group=FINE_TUNING)
    qat_learning_rate: float = option(2e-5, "QAT fine-tune learning rate", group=FINE_TUNING)
    prune_epochs: int = option(4, "pruning fine-tune epochs", group=FINE_TUNING)
    prune_learning_rate: float = option(5e-5, "pruning fine-tune learning rate", group=FINE_TUNING)
    prune_sparsity: float = option(0.5, "share of conv/dense weights set to zero", group=FINE_TUNING)
    float_min_agreement: float = option(0.999, "top-1 agreement with the source model, float formats", group=GATES)
    float32_max_diff: float = option(1e-4, "max |probability difference|, float32 formats", group=GATES)
    float16_max_diff: float = option(1e-2, "max |probability difference|, float16", group=GATES)
    int8_min_agreement: float = option(0.99, "top-1 agreement with the source model, int8 formats", group=GATES)
    int8_max_accuracy_drop: float = option(1.0, "held-out accuracy points an int8 file may lose", group=GATES)
    max_ece: float = option(0.015, "expected calibration error on the held-out test images (15 bins, top-1), "
                                   "every file", group=GATES)
    max_ood_test_rate: float = option(0.08, "share of the held-out test images a file may flag as out of "
                                            "distribution (the threshold flags 5 %% of the validation images)",
                                      group=GATES)
    min_ood_agreement: float = option(0.95, "share of the test images on which a file's out-of-distribution "
                                            "flags agree with its source model's", group=GATES)

    def selected_formats(self) -> list[Format]:
        """The formats to export, in table order (raises UnknownFormat for a key not in the table)."""
        return parse_formats(self.formats, qat=self.qat, prune=self.prune)

    def gates_for(self, family: str) -> dict:
        """The gates of a format family (float32 | float16 | int8), as verify.verify reads them."""
        if family == "float32":
            gates = {"min_agreement": self.float_min_agreement, "max_abs_diff": self.float32_max_diff}
        elif family == "float16":
            gates = {"min_agreement": self.float_min_agreement, "max_abs_diff": self.float16_max_diff}
        else:
            gates = {"min_agreement": self.int8_min_agreement, "max_accuracy_drop_points": self.int8_max_accuracy_drop}
        return {**gates, "max_ece": self.max_ece, "max_ood_test_rate": self.max_ood_test_rate,
                "min_ood_agreement": self.min_ood_agreement}

    def problems(self) -> list[str]:
        """What is wrong with these options, as sentences (empty: nothing)."""
        found = []
        if self.calibration_images < 1:
            found.append("--calibration-images must be at least 1")
        if not 0 < self.prune_sparsity < 1:
            found.append("--prune-sparsity must be between 0 and 1")
        if self.test_limit < 0:
            found.append("--test-limit must be 0 (all) or a positive number")
        if self.temperature < 0:
            found.append("--temperature must be positive (or 0: fitted)")
        return found
