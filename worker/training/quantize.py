"""Edge exports: the ONNX we export, quantised statically to int8 with ONNX Runtime (QDQ,
per-channel weights) and calibrated on training images, or converted to fp16; each measured
against fp32 on the validation split (top-1, agreement, file size, CPU latency per image).

Not `torch.ao.quantization`: deprecated upstream and tied to PyTorch for serving, while a
QDQ ONNX runs in ONNX Runtime on any CPU and feeds TensorRT and other edge runtimes as is.
"""

from __future__ import annotations

import logging
import platform
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared import dataset_store
from worker.training.inference import LoadedModel, export_onnx

log = logging.getLogger(__name__)

FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx", "onnx-fp16": "model.fp16.onnx"}
EDGE_EXPORTS = ("onnx-int8", "onnx-fp16")
# Quantised: the network's arithmetic. Left in float: the preprocessing inside the graph
# (Cast, Transpose, Sub, Mul) and the final Softmax, which lose accuracy for no speed.
QUANTIZED_OPS = [
    "Conv",
    "Gemm",
    "MatMul",
    "Add",
    "Relu",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Concat",
    "Flatten",
]
CALIBRATION_IMAGES = 256  # ORT's guidance is 128-512 representative inputs
# ORT's MinMax calibrator keeps every intermediate output of every calibration image until
# the end (its CalibMaxIntermediateOutputs option drops the collected data instead of merging
# it, onnxruntime 1.32), so large inputs get fewer images: 256 at 64x64, 32 at 224x224
CALIBRATION_PIXELS = 256 * 64 * 64
MIN_CALIBRATION_IMAGES = 32
CALIBRATION_BATCH = 16
MAX_VALIDATION_IMAGES = 10_000
LATENCY_RUNS = 30
MAX_TOP1_DROP_POINTS = 1.0  # above this the report carries a warning


class EdgeExportError(ValueError):
    """An edge export that cannot be made (no training data to calibrate on); says why."""


@dataclass(frozen=True)
class EdgeData:
    """Calibration images (uint8 NHWC, training split) and labelled validation images."""

    calibration: np.ndarray
    calibration_split: str
    val_images: np.ndarray | None
    val_labels: np.ndarray | None
    val_split: str | None


def _sample(reader: dataset_store.SplitReader, count: int, seed: int) -> np.ndarray:
    n = len(reader)
    if n <= count:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))


def load_edge_data(
    dataset_dir: Path,
    model: LoadedModel,
    *,
    calibration_images: int = CALIBRATION_IMAGES,
    max_validation_images: int = MAX_VALIDATION_IMAGES,
    seed: int = 0,
) -> EdgeData:
    """A seeded sample of the training split, and the validation split (test if no val)."""
    present = dataset_store.splits_present(dataset_dir) if dataset_dir.is_dir() else []
    if "train" not in present:
        raise EdgeExportError(
            "the job's dataset is gone or has no training images to calibrate the int8 model on"
        )
    train = dataset_store.open_split(dataset_dir, "train")
    want = (model.height, model.width, model.channels)
    if train.shape != want:
        raise EdgeExportError(
            f"the dataset holds {train.shape[1]}x{train.shape[0]}x{train.shape[2]} images; "
            f"the model takes {want[1]}x{want[0]}x{want[2]}"
        )
    pixels = model.height * model.width
    count = min(calibration_images, max(MIN_CALIBRATION_IMAGES, CALIBRATION_PIXELS // pixels))
    calibration = train.images(_sample(train, count, seed))
    split = next((s for s in ("val", "test") if s in present), None)
    if split is None:
        return EdgeData(calibration, "train", None, None, None)
    reader = dataset_store.open_split(dataset_dir, split)
    classes = dataset_store.read_classes(dataset_dir)
    mapping = np.array([model.classes.index(c) if c in model.classes else -1 for c in classes])
    idx = _sample(reader, max_validation_images, seed + 1)
    labels = mapping[np.asarray(reader.labels, dtype=np.int64)[idx]]
    known = labels >= 0
    return EdgeData(calibration, "train", reader.images(idx[known]), labels[known], split)


class _Calibration:
    """An ONNX Runtime calibration data reader over uint8 NHWC batches."""

    def __init__(self, images: np.ndarray) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [images[i : i + CALIBRATION_BATCH] for i in range(0, len(images), CALIBRATION_BATCH)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"images": np.ascontiguousarray(batch)}


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray) -> None:
    """Static QDQ int8 (per-channel int8 weights, uint8 activations, MinMax ranges)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = _Calibration(calibration)  # ORT reads it by duck typing (get_next)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        source = Path(tmp) / "pre.onnx"
        try:
            # symbolic shape inference and graph optimisation, as ORT asks before quantising
            quant_pre_process(str(fp32), str(source))
        except Exception as exc:  # an optimisation that fails still leaves a quantisable graph
            log.warning("quantisation pre-processing skipped: %s", type(exc).__name__)
            source = fp32
        quantize_static(
            str(source),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=QUANTIZED_OPS,
        )


def convert_fp16(fp32: Path, out: Path) -> None:
    """fp16 weights and arithmetic; the uint8 input and float32 output are kept."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(out))


def _session(path: Path, threads: int) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predict(session: Any, images: np.ndarray, batch: int = 128) -> np.ndarray:
    """Predicted class per uint8 NHWC image."""
    out = [
        session.run(None, {"images": np.ascontiguousarray(images[i : i + batch])})[0].argmax(1)
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def latency_ms(session: Any, image: np.ndarray, runs: int = LATENCY_RUNS) -> float:
    """Median milliseconds for one image (batch of one), after warm-up runs."""
    feed = {"images": np.ascontiguousarray(image[None])}
    for _ in range(3):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def cpu_name() -> str:
    """The CPU the latencies were measured on."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()[:200]
    except OSError:
        pass
    return (platform.processor() or platform.machine())[:200]


def write_edge_exports(
    model: LoadedModel, folder: Path, wanted: list[str], data: EdgeData, threads: int = 0
) -> dict[str, Any]:
    """Write the wanted ONNX variants into `folder` and measure them; the report (a dict)."""
    import onnxruntime

    variants = [v for v in ("onnx", *EDGE_EXPORTS) if v in wanted]
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        fp32 = folder / FILES["onnx"] if "onnx" in wanted else Path(tmp) / FILES["onnx"]
        export_onnx(model, fp32)
        paths = {"onnx": fp32}
        started = time.perf_counter()
        if "onnx-int8" in wanted:
            paths["onnx-int8"] = folder / FILES["onnx-int8"]
            quantize_int8(fp32, paths["onnx-int8"], data.calibration)
        if "onnx-fp16" in wanted:
            paths["onnx-fp16"] = folder / FILES["onnx-fp16"]
            convert_fp16(fp32, paths["onnx-fp16"])
        convert_s = time.perf_counter() - started
        figures: dict[str, dict[str, Any]] = {}
        reference: np.ndarray | None = None
        sample = data.val_images[0] if data.val_images is not None else data.calibration[0]
        for variant in ("onnx", *EDGE_EXPORTS):
            if variant not in paths:
                continue
            session = _session(paths[variant], threads)
            row: dict[str, Any] = {
                "file": FILES[variant] if variant in variants else None,
                "bytes": paths[variant].stat().st_size,
                "top1": None,
                "agreement": None,
                "latency_ms": round(latency_ms(session, sample), 4),
            }
            if data.val_images is not None and data.val_labels is not None:
                predicted = predict(session, data.val_images)
                row["top1"] = (
                    float((predicted == data.val_labels).mean()) if len(predicted) else None
                )
                if reference is None:
                    reference = predicted
                row["agreement"] = (
                    float((predicted == reference).mean()) if len(predicted) else None
                )
            figures[variant] = row
    fp32_row = figures["onnx"]
    warnings: list[str] = []
    for variant in EDGE_EXPORTS:
        if variant not in figures:
            continue
        row = figures[variant]
        row["size_ratio"] = round(row["bytes"] / fp32_row["bytes"], 4)
        row["speedup"] = round(fp32_row["latency_ms"] / row["latency_ms"], 3)
        if row["top1"] is not None and fp32_row["top1"] is not None:
            drop = 100 * (fp32_row["top1"] - row["top1"])
            if drop > MAX_TOP1_DROP_POINTS:
                warnings.append(
                    f"{variant} top-1 is {drop:.1f} points below fp32 on the {data.val_split} split"
                )
    if data.val_images is None:
        warnings.append("the dataset has no validation split: top-1 was not measured")
    return {
        "validation_split": data.val_split,
        "validation_images": 0 if data.val_images is None else len(data.val_images),
        "calibration_split": data.calibration_split,
        "calibration_images": len(data.calibration),
        "calibration_method": "static QDQ, per-channel int8 weights, uint8 activations, MinMax",
        "onnxruntime": onnxruntime.__version__,
        "cpu": cpu_name(),
        "threads": threads,
        "convert_seconds": round(convert_s, 3),
        "variants": figures,
        "warnings": warnings,
    }


__all__ = [
    "EDGE_EXPORTS",
    "FILES",
    "EdgeData",
    "EdgeExportError",
    "convert_fp16",
    "latency_ms",
    "load_edge_data",
    "predict",
    "quantize_int8",
    "write_edge_exports",
]
