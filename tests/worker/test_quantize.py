"""Edge exports of a ResNet-18 trained on the digits: the int8 ONNX is a quarter of the fp32
file, as accurate on the validation split, and takes the same uint8 NHWC input; fp16 too."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from shared import dataset_store
from shared.schemas.jobs import Hyperparameters
from shared.schemas.models import ModelCheckpoint, ModelInfo
from worker.datasets.importer import ImportOptions, Source, import_dataset
from worker.model_server import write_model_dir
from worker.training import inference, quantize
from worker.training.engine import TrainSpec, train

from .test_training import Recorder, write_digits

RESNET = {"kind": "standard", "name": "resnet18"}


@pytest.fixture(scope="module")
def resnet_digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[inference.LoadedModel, Path]:
    """ResNet-18 trained 2 epochs on the 1,797 digits at 16x16 (the network's smallest input:
    a third of the 28 px cost; the digits are 8x8 to begin with), 25 % validation."""
    root = tmp_path_factory.mktemp("resnet-digits")
    write_digits(root / "src", range(10))
    options = ImportOptions(width=16, height=16, channels=1, val_pct=25, seed=1, workers=1)
    import_dataset(Source(kind="folder", root=root / "src"), options, root / "dataset")
    hyper = Hyperparameters(
        epochs=2, batch_size=64, learning_rate=0.05, lr_policy="cosine", seed=0, solver="sgd"
    )
    started = time.perf_counter()
    spec = TrainSpec(root / "dataset", RESNET, hyper, root / "out", device="cpu")
    result = train(spec, Recorder())
    print(
        f"resnet18 on digits 16 px: val accuracy {result.last['val.accuracy']:.3f} "
        f"after {time.perf_counter() - started:.0f} s"
    )
    assert result.last["val.accuracy"] >= 0.85
    return inference.load_checkpoint(root / "out" / "checkpoints" / "last.pt"), root / "dataset"


def _top1(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = session.run(None, {"images": images})[0]
    assert probs.shape == (len(images), 10)
    return float((probs.argmax(1) == labels).mean())


# the export uses the TorchScript-based ONNX exporter on purpose (inference.export_onnx)
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")
def test_int8_onnx_is_small_accurate_and_takes_raw_uint8_images(
    resnet_digits: tuple[inference.LoadedModel, Path], tmp_path: Path
) -> None:
    model, dataset = resnet_digits
    started = time.perf_counter()
    info = write_model_dir(
        model,
        tmp_path,
        name="resnet-digits",
        resize_mode="squash",
        checkpoint=ModelCheckpoint(name="last"),
        exports=["onnx", "onnx-int8", "onnx-fp16"],
        dataset_dir=dataset,
    )
    seconds = time.perf_counter() - started
    report = info.export_report
    assert report is not None
    written = ModelInfo.model_validate_json((tmp_path / "info.json").read_text())
    assert written.export_report == report
    assert written.files.onnx_int8 == "model.int8.onnx"
    assert written.files.onnx_fp16 == "model.fp16.onnx"
    fp32, int8, fp16 = (tmp_path / n for n in ("model.onnx", "model.int8.onnx", "model.fp16.onnx"))
    val = dataset_store.open_split(dataset, "val")
    images, labels = np.array(val.array()), np.asarray(val.labels)
    top1 = {p.name: _top1(p, images, labels) for p in (fp32, int8, fp16)}  # measured here
    figures = report.variants
    print(
        f"export in {seconds:.1f} s; bytes fp32 {fp32.stat().st_size:,} int8 "
        f"{int8.stat().st_size:,} ({int8.stat().st_size / fp32.stat().st_size:.3f}x) fp16 "
        f"{fp16.stat().st_size:,}; top-1 {top1}; latency ms fp32 "
        f"{figures['onnx'].latency_ms} int8 {figures['onnx-int8'].latency_ms} fp16 "
        f"{figures['onnx-fp16'].latency_ms}; report {json.dumps(report.model_dump())[:400]}"
    )
    assert int8.stat().st_size <= 0.3 * fp32.stat().st_size
    assert abs(top1["model.int8.onnx"] - top1["model.onnx"]) <= 0.01
    assert abs(top1["model.fp16.onnx"] - top1["model.onnx"]) <= 0.01
    # the report says what this test measured
    assert figures["onnx"].top1 == pytest.approx(top1["model.onnx"])
    assert figures["onnx-int8"].top1 == pytest.approx(top1["model.int8.onnx"])
    assert figures["onnx-int8"].bytes == int8.stat().st_size
    assert figures["onnx-int8"].size_ratio == pytest.approx(
        int8.stat().st_size / fp32.stat().st_size, abs=1e-4
    )
    assert report.validation_images == len(labels)
    assert report.calibration_split == "train"
    assert report.calibration_images == 256
    assert not report.warnings
    # what the service classifies, the int8 model classifies alike (same input, same classes)
    service = model.predict(images).argmax(1)
    session = onnxruntime.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    agreement = float((session.run(None, {"images": images})[0].argmax(1) == service).mean())
    assert agreement >= 0.97
    assert session.get_inputs()[0].type == "tensor(uint8)"


def test_int8_without_the_training_data_is_refused(
    resnet_digits: tuple[inference.LoadedModel, Path], tmp_path: Path
) -> None:
    model, _ = resnet_digits
    with pytest.raises(quantize.EdgeExportError, match="dataset"):
        write_model_dir(
            model,
            tmp_path,
            name="m",
            resize_mode="squash",
            checkpoint=ModelCheckpoint(),
            exports=["onnx-int8"],
            dataset_dir=None,
        )
    with pytest.raises(quantize.EdgeExportError, match="no training images"):
        quantize.load_edge_data(tmp_path / "gone", model)
    assert not list(tmp_path.iterdir())  # refused before anything was written
