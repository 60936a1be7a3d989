"""The model service: keeps trained models warm and answers interactive classify and export
requests from the API, in its own process, so they never wait behind training jobs.

It listens on a private address (127.0.0.1, or the compose backend network) and takes file
paths inside the data directory from the API, which has already checked ownership.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shared.settings import Settings
from worker.training import inference

log = logging.getLogger("digits.model_server")


class ModelCache:
    """Loaded models by checkpoint path, least recently used evicted first."""

    def __init__(self, size: int, device: str) -> None:
        self.size = size
        self.device = device
        self._items: OrderedDict[tuple[str, int], inference.LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> inference.LoadedModel:
        key = (str(path), path.stat().st_mtime_ns)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        model = (
            inference.load_model_dir(path, self.device)[0]
            if path.is_dir()
            else inference.load_checkpoint(path, self.device)
        )
        with self._lock:
            self._items[key] = model
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return model


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"code": code, "detail": detail}, status_code=status)


def create_app(settings: Settings | None = None) -> Starlette:
    """The model service's ASGI app."""
    settings = settings or Settings()
    root = settings.resolved_data_dir
    device = settings.model_server_device or ("cuda" if torch.cuda.is_available() else "cpu")
    cache = ModelCache(settings.model_cache_size, device)

    def inside(raw: str) -> Path:
        path = Path(os.path.realpath(raw))
        if root != path and root not in path.parents:
            raise PermissionError(f"{raw} is outside the data directory")
        return path

    async def classify(request: Request) -> JSONResponse:
        form = await request.form(max_files=10_000)
        try:
            model_path = inside(str(form["model"]))
            resize_mode = str(form.get("resize_mode") or "squash")
            k = int(str(form.get("top_k") or 5))
            files = [f for f in form.getlist("images") if hasattr(f, "read")]
            payload = [
                (f.filename or f"image-{i}", await f.read())  # type: ignore[union-attr]
                for i, f in enumerate(files)
            ]
        except (KeyError, ValueError, PermissionError) as exc:
            return _error(400, "bad_request", str(exc))
        finally:
            await form.close()

        def run() -> dict[str, Any]:
            started = time.perf_counter()
            model = cache.get(model_path)
            arrays = np.stack(
                [
                    inference.prepare_image(
                        data,
                        name,
                        width=model.width,
                        height=model.height,
                        channels=model.channels,
                        resize_mode=resize_mode,
                        max_pixels=settings.max_image_pixels,
                    )
                    for name, data in payload
                ]
            )
            probs = model.predict(arrays)
            tops = inference.top_k(probs, model.classes, k)
            return {
                "predictions": [
                    {"filename": name, "top": top}
                    for (name, _), top in zip(payload, tops, strict=True)
                ],
                "probabilities": probs.tolist(),
                "classes": model.classes,
                "device": str(model.device),
                "milliseconds": round((time.perf_counter() - started) * 1000, 3),
            }

        from starlette.concurrency import run_in_threadpool

        try:
            return JSONResponse(await run_in_threadpool(run))
        except inference.InferenceInputError as exc:
            return _error(400, "invalid_image", str(exc))
        except (inference.ModelFileError, FileNotFoundError) as exc:
            return _error(409, "model_unavailable", str(exc))

    async def export(request: Request) -> JSONResponse:
        body = await request.json()
        try:
            model_path = inside(body["model"])
            out = inside(body["out"])
        except (KeyError, PermissionError) as exc:
            return _error(400, "bad_request", str(exc))

        def run() -> dict[str, Any]:
            model = load_fresh(model_path)  # exports move it between devices: not the cached one
            with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
                folder = Path(tmp) / "model"
                folder.mkdir()
                write_model_dir(
                    model,
                    folder,
                    name=body.get("name", "model"),
                    resize_mode=body.get("resize_mode", "squash"),
                    checkpoint=body.get("checkpoint") or {},
                    exports=body.get("exports") or [],
                )
                pack(folder, out, body.get("format", "tar.gz"))
            return {"path": str(out), "size": out.stat().st_size}

        from starlette.concurrency import run_in_threadpool

        try:
            return JSONResponse(await run_in_threadpool(run))
        except (inference.ModelFileError, FileNotFoundError) as exc:
            return _error(409, "model_unavailable", str(exc))

    async def pretrained(request: Request) -> JSONResponse:
        """Validate an unpacked model (or write one from a checkpoint) into `out_dir`."""
        body = await request.json()
        try:
            source = inside(body["source"])
            out_dir = inside(body["out_dir"])
        except (KeyError, PermissionError) as exc:
            return _error(400, "bad_request", str(exc))

        def run() -> dict[str, Any]:
            if source.is_dir():
                model, info = inference.load_model_dir(source, "cpu")
                resize_mode = info["input"].get("resize_mode") or "squash"
            else:
                model = load_fresh(source)
                resize_mode = body.get("resize_mode", "squash")
            out_dir.mkdir(parents=True, exist_ok=True)
            info = write_model_dir(
                model,
                out_dir,
                name=body.get("name", "model"),
                resize_mode=resize_mode,
                checkpoint=body.get("checkpoint") or {},
                exports=[],
            )
            # the starting weights of fine-tuning jobs, as a weights_only-loadable state dict
            torch.save({"model": model.classifier.net.state_dict()}, out_dir / "init.pt")
            return info

        from starlette.concurrency import run_in_threadpool

        try:
            return JSONResponse(await run_in_threadpool(run))
        except inference.ModelFileError as exc:
            return _error(400, "invalid_model", str(exc))

    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "device": device, "torch": torch.__version__})

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/classify", classify, methods=["POST"]),
            Route("/export", export, methods=["POST"]),
            Route("/pretrained", pretrained, methods=["POST"]),
        ]
    )


def load_fresh(path: Path) -> inference.LoadedModel:
    """A private CPU copy of a model (a checkpoint file or an unpacked model folder)."""
    if path.is_dir():
        return inference.load_model_dir(path, "cpu")[0]
    return inference.load_checkpoint(path, "cpu")


def write_model_dir(
    model: inference.LoadedModel,
    folder: Path,
    *,
    name: str,
    resize_mode: str,
    checkpoint: dict[str, Any],
    exports: list[str],
) -> dict[str, Any]:
    """info.json, labels.txt, weights.safetensors, mean.npy and the requested exports."""
    inference.save_safetensors(model, folder / "weights.safetensors")
    (folder / "labels.txt").write_text("\n".join(model.classes) + "\n")
    mean = inference.mean_array(model)
    if mean is not None:
        np.save(folder / "mean.npy", mean, allow_pickle=False)
    files: dict[str, str] = {}
    if "torchscript" in exports:
        inference.export_torchscript(model, folder / "model.torchscript.pt")
        files["torchscript"] = "model.torchscript.pt"
    if "onnx" in exports:
        inference.export_onnx(model, folder / "model.onnx")
        files["onnx"] = "model.onnx"
    info = inference.info_json(
        model, name=name, resize_mode=resize_mode, checkpoint=checkpoint, exports=files
    )
    (folder / "info.json").write_text(json.dumps(info, indent=2))
    return info


def pack(folder: Path, out: Path, fmt: str) -> None:
    """Archive the folder's files (flat) as tar.gz or zip, atomically."""
    tmp = out.with_name(f".{out.name}.tmp")
    if fmt == "zip":
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(folder.iterdir()):
                zf.write(path, path.name)
    else:
        with tarfile.open(tmp, "w:gz") as tf:
            for path in sorted(folder.iterdir()):
                tf.add(path, path.name)
    os.replace(tmp, out)


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the model service."""
    import uvicorn

    torch.set_num_threads(max(1, settings.model_server_threads or (os.cpu_count() or 1)))
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


__all__ = ["create_app", "pack", "serve"]
