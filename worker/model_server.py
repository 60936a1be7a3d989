"""The model service: keeps trained models warm and answers interactive classify and export
requests from the API, in its own process, so they never wait behind training jobs.

It listens on a private address (127.0.0.1, or the compose backend network) and takes file
paths inside the data directory from the API, which has already checked ownership. Every
answer to bad input is a 4xx `{"code", "detail"}`; anything else is a 500 with the code
`model_service_error`, logged here with its traceback and never sent to the caller.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import re
import tarfile
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import artifacts, images
from shared.models.enums import ResizeMode
from shared.schemas.models import (
    ExportReport,
    ModelCheckpoint,
    ModelInfo,
    ModelServiceExport,
    ModelServicePretrained,
    validation_message,
)
from shared.settings import Settings
from worker.training import explain as explaining
from worker.training import inference, layers, predict, quantize

log = logging.getLogger("digits.model_server")

MAX_JSON_BODY = 1024 * 1024  # the API's bodies are a few hundred bytes
MAX_NAME_BYTES = 240  # NAME_MAX is 255; temporary names add a prefix and a suffix
MAX_TOP_K = 1000
_REPR = re.compile(r"\s*<[^<>]{0,200} at 0x[0-9a-fA-F]+>")
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f]")
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
M = TypeVar("M", bound=BaseModel)


class ServiceError(Exception):
    """A request the service cannot answer as asked: its status, stable code and reason."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def _problem(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"code": code, "detail": detail}, status_code=status)


def _label(name: str) -> str:
    """A client's file name as it may appear inside a message: printable, at most 100 chars."""
    text = _UNPRINTABLE.sub("?", name)
    return text if len(text) <= 100 else text[:99] + "…"


class ModelCache:
    """Loaded models by checkpoint path, least recently used evicted first."""

    def __init__(self, size: int, device: str, limits: inference.ModelLimits) -> None:
        self.size = size
        self.device = device
        self.limits = limits
        self._items: OrderedDict[tuple[str, int], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> inference.LoadedModel:
        return self._get(path, self._load)  # type: ignore[no-any-return]

    def get_dense(self, path: Path) -> predict.DenseModel:
        """A detection or segmentation checkpoint."""
        return self._get(path, lambda p: predict.load(p, self.device))  # type: ignore[no-any-return]

    def _load(self, path: Path) -> inference.LoadedModel:
        if path.is_dir():
            return inference.load_model_dir(path, self.device, self.limits)[0]
        return inference.load_checkpoint(path, self.device)

    def _get(self, path: Path, loader: Callable[[Path], Any]) -> Any:
        key = (str(path), path.stat().st_mtime_ns)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        model = loader(path)
        with self._lock:
            self._items[key] = model
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return model


def _unavailable(exc: Exception) -> ServiceError:
    """A model the API pointed at that cannot be used (gone, or damaged): 409."""
    if isinstance(exc, inference.ModelFileError):
        return ServiceError(409, "model_unavailable", str(exc))
    return ServiceError(409, "model_unavailable", "the model file is missing")


def create_app(settings: Settings | None = None) -> Starlette:
    """The model service's ASGI app."""
    settings = settings or Settings()
    root = Path(os.path.realpath(settings.resolved_data_dir))
    store = artifacts.get_store(settings)
    scratch = settings.resolved_cache_dir / "model-service"
    device = settings.model_server_device or ("cuda" if torch.cuda.is_available() else "cpu")
    limits = inference.ModelLimits(weights_bytes=settings.pretrained_max_weights_bytes)
    cache = ModelCache(settings.model_cache_size, device, limits)
    # explanations and layer views hook their model's modules, so they get their own copies
    # (a classify on the shared one would fire the hooks) and take turns on them
    insight_cache = ModelCache(max(1, settings.model_cache_size // 4), device, limits)
    insight_lock = threading.Lock()

    def clean(detail: str) -> str:
        """A message fit for the caller: no object reprs, no server paths, bounded."""
        text = _REPR.sub("", detail).replace(str(root), "<data>")
        return text if len(text) <= 1000 else text[:999] + "…"

    def guarded(
        endpoint: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        """Bad input becomes its 4xx answer; any other failure a logged, traceback-free 500."""

        @functools.wraps(endpoint)
        async def handler(request: Request) -> Response:
            try:
                return await endpoint(request)
            except ServiceError as exc:
                return _problem(exc.status, exc.code, clean(exc.detail))
            except ClientDisconnect:  # the caller went away mid-body: nobody reads an answer
                log.info("%s %s: the client disconnected", request.method, request.url.path)
                return _problem(400, "bad_request", "the request body ended early")
            except Exception:
                log.exception("%s %s failed", request.method, request.url.path)
                return _problem(
                    500, "model_service_error", "the model service failed on this request"
                )

        return handler

    def inside(raw: str, field: str) -> Path:
        """A ref from the API (a path in the data directory, or a storage key), checked, as a
        local file or folder to read (with a bucket, fetched: call it off the event loop)."""
        checked = ref_of(raw, field)
        if store.local:
            return Path(checked)
        try:
            return artifacts.fetch_any(store, checked, scratch)
        except FileNotFoundError:
            return scratch / "missing" / Path(checked).name  # the caller says what is missing
        except artifacts.StorageUnavailable as exc:
            raise ServiceError(503, "storage_unavailable", str(exc)) from None

    def target(raw: str, field: str) -> Path:
        """Where to write what the API will find at the ref (then `artifacts.publish`)."""
        return artifacts.output_path(store, ref_of(raw, field), scratch)

    def ref_of(raw: str, field: str) -> str:
        """A ref from the API, checked to name something inside the data directory."""
        if "\x00" in raw:
            raise ServiceError(400, "invalid_path", f"{field}: a path cannot hold a NUL byte")
        try:
            encoded = os.fsencode(raw)
        except UnicodeError:
            raise ServiceError(400, "invalid_path", f"{field}: not a valid path") from None
        if any(len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")):
            raise ServiceError(
                400, "invalid_path", f"{field}: a name in the path exceeds {MAX_NAME_BYTES} bytes"
            )
        if not store.local:
            try:
                return store.key(raw)
            except artifacts.InvalidKey:
                raise ServiceError(400, "invalid_path", f"{field} is not a storage key") from None
        path = Path(os.path.realpath(raw if os.path.isabs(raw) else root / raw))
        if root != path and root not in path.parents:
            raise ServiceError(400, "invalid_path", f"{field} is outside the data directory")
        return str(path)

    async def json_body(request: Request, schema: type[M]) -> M:
        """The request's JSON body as `schema`, refused with the field at fault."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_JSON_BODY:
                raise ServiceError(413, "too_large", f"the body exceeds {MAX_JSON_BODY:,} bytes")
            chunks.append(chunk)
        try:
            return schema.model_validate_json(b"".join(chunks))
        except ValidationError as exc:
            raise ServiceError(400, "bad_request", validation_message(exc)) from None

    async def read_form(request: Request) -> FormData:
        try:
            return await request.form(
                max_files=settings.classify_max_images, max_fields=100, max_part_size=64 * 1024
            )
        except HTTPException as exc:  # what Starlette makes of a malformed multipart body
            raise ServiceError(400, "bad_request", str(exc.detail)) from None

    def form_text(form: FormData, name: str, default: str | None = None) -> str:
        value = form.get(name)
        if value is None or value == "":
            if default is None:
                raise ServiceError(400, "bad_request", f"the form field `{name}` is required")
            return default
        if not isinstance(value, str):
            raise ServiceError(400, "bad_request", f"`{name}` must be a form field, not a file")
        return value

    def classify_form(form: FormData) -> tuple[Path, ResizeMode, int, list[UploadFile]]:
        model_path = inside(form_text(form, "model"), "model")
        mode = form_text(form, "resize_mode", "squash")
        try:
            resize_mode = ResizeMode(mode)
        except ValueError:
            allowed = ", ".join(m.value for m in ResizeMode)
            raise ServiceError(
                400, "bad_request", f"resize_mode must be one of {allowed}, not {_label(mode)!r}"
            ) from None
        raw_k = form_text(form, "top_k", "5")
        if not raw_k.isdigit() or not 1 <= int(raw_k) <= MAX_TOP_K:
            raise ServiceError(
                400, "bad_request", f"top_k must be a whole number from 1 to {MAX_TOP_K}"
            )
        uploads = [f for f in form.getlist("images") if isinstance(f, UploadFile)]
        if not uploads:
            raise ServiceError(400, "bad_request", "send at least one image as `images`")
        return model_path, resize_mode, int(raw_k), uploads

    def classify_images(
        model_path: Path, resize_mode: ResizeMode, k: int, payload: list[tuple[str, bytes]]
    ) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            model = cache.get(model_path)
        except (inference.ModelFileError, FileNotFoundError, NotADirectoryError) as exc:
            raise _unavailable(exc) from None
        arrays: list[np.ndarray] = []
        errors: list[str | None] = []
        for name, data in payload:
            try:
                arrays.append(
                    inference.prepare_image(
                        data,
                        _label(name),
                        width=model.width,
                        height=model.height,
                        channels=model.channels,
                        resize_mode=resize_mode.value,
                        max_pixels=settings.max_image_pixels,
                    )
                )
                errors.append(None)
            except inference.InferenceInputError as exc:
                errors.append(clean(str(exc)))
            except Exception as exc:
                # a conversion the image rules do not name yet (PIL raises plain ValueError
                # or OSError for some modes): this image's fault, not the request's
                log.warning("image %s not converted: %s", _label(name), type(exc).__name__)
                errors.append(f"{_label(name)}: this image cannot be converted for the model")
        if not arrays:
            first = next(e for e in errors if e)
            more = f" (and {len(errors) - 1} more images)" if len(errors) > 1 else ""
            raise ServiceError(400, "invalid_image", first + more)
        probs = model.predict(np.stack(arrays))
        tops = iter(inference.top_k(probs, model.classes, k))
        rows = iter(probs.tolist())
        predictions: list[dict[str, Any]] = []
        probabilities: list[list[float] | None] = []
        for (name, _), error in zip(payload, errors, strict=True):
            if error is None:
                predictions.append({"filename": name, "top": next(tops)})
                probabilities.append(next(rows))
            else:
                predictions.append({"filename": name, "top": [], "error": error})
                probabilities.append(None)
        return {
            "predictions": predictions,
            "probabilities": probabilities,
            "classes": model.classes,
            "device": str(model.device),
            "milliseconds": round((time.perf_counter() - started) * 1000, 3),
        }

    @guarded
    async def classify(request: Request) -> Response:
        form = await read_form(request)
        try:
            model_path, resize_mode, k, uploads = await run_in_threadpool(classify_form, form)
            payload = [(f.filename or f"image-{i}", await f.read()) for i, f in enumerate(uploads)]
        finally:
            await form.close()
        return JSONResponse(
            await run_in_threadpool(classify_images, model_path, resize_mode, k, payload)
        )

    @guarded
    async def export(request: Request) -> Response:
        body = await json_body(request, ModelServiceExport)

        def run() -> dict[str, Any]:
            model_path = inside(body.model, "model")
            out = target(body.out, "out")
            try:
                return write(model_path, out)
            finally:
                artifacts.discard_scratch(out, scratch)

        def write(model_path: Path, out: Path) -> dict[str, Any]:
            if body.task != "classification":
                try:
                    dense_model = predict.load(model_path, "cpu")
                except inference.ModelFileError as exc:
                    raise _unavailable(exc) from None
                allowed = predict.exports_of(dense_model)
                refused = [e for e in body.exports if e not in allowed]
                if refused:
                    raise ServiceError(
                        400,
                        "unsupported_task",
                        f"a {predict.type_name(dense_model)} model exports "
                        f"{', '.join(allowed) or 'nothing but its weights'}, not {refused[0]}",
                    )

                def fill_dense(folder: Path) -> None:
                    try:
                        predict.write_model_dir(
                            dense_model,
                            folder,
                            name=body.name,
                            resize_mode=body.resize_mode.value,
                            checkpoint=body.checkpoint.model_dump(mode="json"),
                            exports=list(body.exports),
                        )
                    except (RuntimeError, ValueError) as exc:  # the ONNX exporter's errors included
                        log.warning("dense export failed: %s: %s", type(exc).__name__, exc)
                        raise ServiceError(
                            409,
                            "export_failed",
                            f"the {', '.join(body.exports)} export of this "
                            f"{predict.type_name(dense_model)} failed; its weights download "
                            "without it",
                        ) from None

                return packed(out, fill_dense)
            try:
                model = load_fresh(model_path, limits)  # moved between devices: not the cached one
            except (inference.ModelFileError, FileNotFoundError, NotADirectoryError) as exc:
                raise _unavailable(exc) from None

            def fill(folder: Path) -> None:
                try:
                    write_model_dir(
                        model,
                        folder,
                        name=body.name,
                        resize_mode=body.resize_mode.value,
                        checkpoint=body.checkpoint,
                        exports=list(body.exports),
                        dataset_dir=edge_dataset(body),
                    )
                except inference.ModelFileError as exc:
                    raise ServiceError(409, "model_unavailable", str(exc)) from None
                except quantize.EdgeExportError as exc:
                    raise ServiceError(409, "dataset_unavailable", str(exc)) from None

            return packed(out, fill)

        def packed(out: Path, fill: Callable[[Path], Any]) -> dict[str, Any]:
            """A model folder filled by `fill`, archived at `out` and published."""
            out.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
                folder = Path(tmp) / "model"
                folder.mkdir()
                fill(folder)
                pack(folder, out, body.format)
            size = out.stat().st_size
            artifacts.publish(store, body.out, out)
            return {"path": body.out, "size": size}

        return JSONResponse(await run_in_threadpool(run))

    @guarded
    async def pretrained(request: Request) -> Response:
        """Validate an unpacked model (or write one from a checkpoint) into `out_dir`."""
        body = await json_body(request, ModelServicePretrained)

        def run() -> dict[str, Any]:
            source = inside(body.source, "source")
            out_dir = target(body.out_dir, "out_dir")
            try:
                return write(source, out_dir)
            finally:
                artifacts.discard_scratch(source, scratch)
                artifacts.discard_scratch(out_dir, scratch)

        def write(source: Path, out_dir: Path) -> dict[str, Any]:
            try:
                if source.is_dir():
                    model, upload = inference.load_model_dir(source, "cpu", limits)
                    resize_mode = upload.input.resize_mode.value
                    name, checkpoint = upload.name, upload.checkpoint
                else:
                    model = load_fresh(source, limits)
                    resize_mode = (body.resize_mode or ResizeMode.SQUASH).value
                    name, checkpoint = "model", ModelCheckpoint()
                out_dir.mkdir(parents=True, exist_ok=True)
                info = write_model_dir(
                    model,
                    out_dir,
                    name=body.name or name,
                    resize_mode=resize_mode,
                    checkpoint=body.checkpoint or checkpoint,
                    exports=[],
                )
            except inference.ModelFileError as exc:
                raise ServiceError(400, "invalid_model", str(exc)) from None
            # the starting weights of fine-tuning jobs, as a weights_only-loadable state dict
            torch.save({"model": model.classifier.net.state_dict()}, out_dir / "init.pt")
            artifacts.publish(store, body.out_dir, out_dir)
            return info.model_dump(mode="json")

        return JSONResponse(await run_in_threadpool(run))

    def edge_dataset(body: ModelServiceExport) -> Path | None:
        """The job's dataset here, for int8/fp16 exports (calibration and validation)."""
        if body.dataset_id is None or not set(body.exports) & set(quantize.EDGE_EXPORTS):
            return None
        try:
            return artifacts.local_dataset(settings, body.dataset_id)
        except (FileNotFoundError, OSError, ValueError, KeyError):
            return None  # write_model_dir says the data is gone

    # -- insight: explanations and layer views -----------------------------------------------

    def insight_model(model_path: Path) -> inference.LoadedModel:
        try:
            model = insight_cache.get(model_path)
        except (inference.ModelFileError, FileNotFoundError, NotADirectoryError) as exc:
            raise _unavailable(exc) from None
        explaining.freeze(model)
        return model

    def prepared(
        model: inference.LoadedModel, name: str, data: bytes, resize_mode: ResizeMode
    ) -> tuple[np.ndarray | None, str | None]:
        """One upload at the model's input size, or why it cannot be used (as classify)."""
        try:
            array = inference.prepare_image(
                data,
                _label(name),
                width=model.width,
                height=model.height,
                channels=model.channels,
                resize_mode=resize_mode.value,
                max_pixels=settings.max_image_pixels,
            )
            return array, None
        except inference.InferenceInputError as exc:
            return None, clean(str(exc))
        except Exception as exc:  # this image's fault, not the request's (see classify)
            log.warning("image %s not converted: %s", _label(name), type(exc).__name__)
            return None, f"{_label(name)}: this image cannot be converted for the model"

    def whole_number(form: FormData, name: str, low: int, high: int) -> int | None:
        raw = form_text(form, name, "")
        if raw == "":
            return None
        if not raw.isdigit() or not low <= int(raw) <= high:
            raise ServiceError(400, "bad_request", f"{name} must be a whole number {low}-{high}")
        return int(raw)

    def explain_form(form: FormData) -> tuple[str, str | None, bool, int, int | None]:
        method = form_text(form, "method", "gradcam")
        if method not in explaining.METHODS:
            raise ServiceError(
                400,
                "bad_request",
                f"method must be one of {', '.join(explaining.METHODS)}, not {_label(method)!r}",
            )
        raw = form_text(form, "raw", "false").lower()
        if raw not in ("true", "false", "1", "0"):
            raise ServiceError(400, "bad_request", "raw must be true or false")
        steps = whole_number(form, "steps", 2, explaining.MAX_IG_STEPS) or explaining.IG_STEPS
        window = whole_number(form, "window", 1, 4096)
        target = form_text(form, "target", "") or None
        return method, target, raw in ("true", "1"), steps, window

    def explain_images(
        model_path: Path,
        resize_mode: ResizeMode,
        k: int,
        payload: list[tuple[str, bytes]],
        how: tuple[str, str | None, bool, int, int | None],
    ) -> dict[str, Any]:
        method, raw_target, raw, steps, window = how
        started = time.perf_counter()
        with insight_lock:
            model = insight_model(model_path)
            try:
                options = explaining.ExplainOptions(
                    method=method,  # type: ignore[arg-type]
                    target=explaining.target_index(raw_target, model.classes),
                    top_k=k,
                    steps=steps,
                    window=window,
                )
            except explaining.ExplainError as exc:
                raise ServiceError(400, "invalid_target", str(exc)) from None
            answers: list[dict[str, Any]] = []
            for name, data in payload:
                array, error = prepared(model, name, data, resize_mode)
                if array is None:
                    answers.append(explaining.failed_json(name, method, error or "unusable"))
                    continue
                try:
                    item = explaining.explain_image(model, array, options)
                except explaining.ExplainError as exc:  # the method, not the image, is at fault
                    raise ServiceError(400, "unsupported_method", str(exc)) from None
                answers.append(explaining.as_json(name, item, raw))
        if all(a["error"] for a in answers):
            more = f" (and {len(answers) - 1} more images)" if len(answers) > 1 else ""
            raise ServiceError(400, "invalid_image", answers[0]["error"] + more)
        return {
            "method": method,
            "explanations": answers,
            "device": str(model.device),
            "milliseconds": round((time.perf_counter() - started) * 1000, 3),
        }

    @guarded
    async def explain(request: Request) -> Response:
        """Heat maps of why the model chose (or would choose) a class, per image."""
        form = await read_form(request)
        try:
            model_path, resize_mode, k, uploads = await run_in_threadpool(classify_form, form)
            how = explain_form(form)
            payload = [(f.filename or f"image-{i}", await f.read()) for i, f in enumerate(uploads)]
        finally:
            await form.close()
        return JSONResponse(
            await run_in_threadpool(explain_images, model_path, resize_mode, k, payload, how)
        )

    def layer_images(
        model_path: Path, resize_mode: ResizeMode, k: int, name: str, data: bytes
    ) -> dict[str, Any]:
        started = time.perf_counter()
        with insight_lock:
            model = insight_model(model_path)
            array, error = prepared(model, name, data, resize_mode)
            if array is None:
                raise ServiceError(400, "invalid_image", error or "unusable image")
            probs, views = layers.layer_views(model, array)
        for view in views:
            for key in ("activations_png", "filters_png"):
                if view[key] is not None:
                    view[key] = base64.b64encode(view[key]).decode("ascii")
        return {
            "predictions": [{"filename": name, "top": inference.top_k(probs, model.classes, k)[0]}],
            "layers": views,
            "device": str(model.device),
            "milliseconds": round((time.perf_counter() - started) * 1000, 3),
        }

    @guarded
    async def layer_view(request: Request) -> Response:
        """DIGITS's per-layer statistics and pictures for one image, from one forward pass."""
        form = await read_form(request)
        try:
            model_path, resize_mode, k, uploads = await run_in_threadpool(classify_form, form)
            if len(uploads) != 1:
                raise ServiceError(400, "bad_request", "layer views take exactly one image")
            name, data = uploads[0].filename or "image-0", await uploads[0].read()
        finally:
            await form.close()
        return JSONResponse(
            await run_in_threadpool(layer_images, model_path, resize_mode, k, name, data)
        )

    def predict_form(form: FormData) -> tuple[Path, ResizeMode, float, list[UploadFile]]:
        model_path, resize_mode, _k, uploads = classify_form(form)
        raw = form_text(form, "threshold", "0.5")
        try:
            threshold = float(raw) if len(raw) <= 32 else float("nan")
        except ValueError:
            threshold = float("nan")
        if not 0.0 <= threshold <= 1.0:  # NaN fails both
            raise ServiceError(400, "bad_request", "threshold must be a number from 0 to 1")
        return model_path, resize_mode, threshold, uploads

    def predict_images(
        model_path: Path,
        resize_mode: ResizeMode,
        threshold: float,
        payload: list[tuple[str, bytes]],
    ) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            model = cache.get_dense(model_path)
        except (inference.ModelFileError, FileNotFoundError, NotADirectoryError) as exc:
            raise _unavailable(exc) from None

        def describe(name: str, exc: Exception) -> str:
            if isinstance(exc, images.ImageError):
                return clean(f"{_label(name)}: {exc.message}")
            log.warning("image %s not converted: %s", _label(name), type(exc).__name__)
            return f"{_label(name)}: cannot be converted"

        rows = predict.prediction_rows(
            model,
            payload,
            resize_mode=resize_mode.value,
            threshold=threshold,
            max_pixels=settings.max_image_pixels,
            describe=describe,
        )
        if all("error" in row for row in rows):
            raise ServiceError(400, "invalid_image", rows[0]["error"])
        return {
            "task": model.task,
            "classes": model.classes,
            "threshold": threshold,
            "predictions": rows,
            "device": str(model.device),
            "milliseconds": round((time.perf_counter() - started) * 1000, 3),
        }

    @guarded
    async def predict_route(request: Request) -> Response:
        form = await read_form(request)
        try:
            model_path, resize_mode, threshold, uploads = await run_in_threadpool(
                predict_form, form
            )
            payload = [(f.filename or f"image-{i}", await f.read()) for i, f in enumerate(uploads)]
        finally:
            await form.close()
        return JSONResponse(
            await run_in_threadpool(predict_images, model_path, resize_mode, threshold, payload)
        )

    @guarded
    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "device": device, "torch": torch.__version__})

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return _problem(exc.status_code, code, str(exc.detail))

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/classify", classify, methods=["POST"]),
            Route("/predict", predict_route, methods=["POST"]),
            Route("/export", export, methods=["POST"]),
            Route("/pretrained", pretrained, methods=["POST"]),
            Route("/explain", explain, methods=["POST"]),
            Route("/layers", layer_view, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error},
    )
    app.add_middleware(AnswerEveryFailure)
    return app


class AnswerEveryFailure:
    """Outermost guard: an exception no handler caught is still answered, as a clean 500.

    Starlette's own error middleware answers too but then re-raises, and uvicorn closes the
    connection of a request that raised, resetting a keep-alive client's next request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("%s %s failed outside its handler", scope.get("method"), scope["path"])
            if not started:
                response = _problem(
                    500, "model_service_error", "the model service failed on this request"
                )
                await response(scope, receive, send)


def load_fresh(
    path: Path, limits: inference.ModelLimits = inference.ModelLimits()
) -> inference.LoadedModel:
    """A private CPU copy of a model (a checkpoint file or an unpacked model folder)."""
    if path.is_dir():
        return inference.load_model_dir(path, "cpu", limits)[0]
    return inference.load_checkpoint(path, "cpu")


def write_model_dir(
    model: inference.LoadedModel,
    folder: Path,
    *,
    name: str,
    resize_mode: str,
    checkpoint: ModelCheckpoint,
    exports: list[str],
    dataset_dir: Path | None = None,
) -> ModelInfo:
    """info.json, labels.txt, weights.safetensors, mean.npy and the requested exports.

    int8 and fp16 ONNX need `dataset_dir`, the job's dataset: they are calibrated on its
    training split and measured against fp32 on its validation split (info.json's report).
    """
    files: dict[str, str] = {}
    if "torchscript" in exports:
        files["torchscript"] = "model.torchscript.pt"
    if "onnx" in exports:
        files["onnx"] = "model.onnx"
    edge = [e for e in quantize.EDGE_EXPORTS if e in exports]
    for name in edge:
        files[name.replace("-", "_")] = quantize.FILES[name]
    data = None
    if edge:  # read before anything is written: a job whose data is gone fails at once
        if dataset_dir is None:
            raise quantize.EdgeExportError(
                "int8 and fp16 exports are calibrated and checked on the job's dataset, "
                "which is gone"
            )
        data = quantize.load_edge_data(dataset_dir, model)
    # described (and so validated) before anything is written
    info = inference.info_json(
        model,
        name=name,
        resize_mode=resize_mode,
        checkpoint=checkpoint.model_dump(mode="json"),
        exports=files,
    )
    inference.save_safetensors(model, folder / "weights.safetensors")
    (folder / "labels.txt").write_text("\n".join(model.classes) + "\n")
    mean = inference.mean_array(model)
    if mean is not None:
        np.save(folder / "mean.npy", mean, allow_pickle=False)
    if "torchscript" in files:
        inference.export_torchscript(model, folder / files["torchscript"])
    if data is not None:
        onnx = [e for e in exports if e.startswith("onnx")]
        report = quantize.write_edge_exports(model, folder, onnx, data, torch.get_num_threads())
        info = info.model_copy(update={"export_report": ExportReport.model_validate(report)})
    elif "onnx" in files:
        inference.export_onnx(model, folder / files["onnx"])
    (folder / "info.json").write_text(info.model_dump_json(indent=2))
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
