"""The FastAPI application of ``cxrdet serve``: the page at ``/``, the API under ``/v1``.

``POST /v1/predict`` (multipart, field ``file``) -> the prediction JSON; ``GET /v1/models``;
``GET /v1/results/{id}/image.png`` (the preprocessed display image) and ``.../overlay.png``
(drawn by ``cxrdet infer --vis-dir``'s code) for recent results; ``GET /healthz``; the OpenAPI
schema at ``/openapi.json`` with Swagger UI at ``/docs`` served from local files
(fastapi-offline), since hospital networks often have no internet. Every error is JSON
``{"detail": reason}``; a bad upload never stops the server.
"""

from __future__ import annotations

import hmac
import logging
import shutil
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from cxrdet.serve.queue import ModelQueue, PredictionFailed, QueueFull
from cxrdet.serve.results import ResultStore, class_filter, new_request_id, response_body
from cxrdet.serve.schemas import ERROR_RESPONSES, UPLOAD_BODY, HealthResponse, PredictResponse
from cxrdet.serve.service import Service
from cxrdet.serve.uploads import UploadRejected, receive_upload, upload_sample

STATIC = Path(__file__).parent / "static"
PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'"
log = logging.getLogger("cxrdet.serve")


class Unauthorized(Exception):
    pass


def create_app(service: Service) -> FastAPIOffline:
    """The app around an already loaded :class:`Service` (models load once, before this)."""
    cfg = service.config
    queue = ModelQueue(service.runner, cfg.queue_size, cfg.batch_size, cfg.decode_workers)

    @asynccontextmanager
    async def lifespan(app):
        queue.start()
        yield
        await queue.stop()

    app = FastAPIOffline(title="cxrdet serve", version=service.versions.get("cxrdet", ""), lifespan=lifespan,
                         swagger_ui_parameters={"validatorUrl": None},
                         description="Chest X-ray findings (VinBigData classes) for one image at a time.")
    app.state.service, app.state.queue = service, queue
    app.state.store = ResultStore(cfg.keep_results, cfg.result_ttl_s)
    install_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(router)
    return app


def require_token(request: Request) -> None:
    """The /v1 routes' dependency: with a token configured, ``Authorization: Bearer TOKEN``."""
    token = request.app.state.service.config.token
    if token is None:
        return
    sent = request.headers.get("authorization", "")
    if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
        raise Unauthorized()


router = APIRouter()
API = {"dependencies": [Depends(require_token)], "responses": ERROR_RESPONSES}
PNG = {"response_class": Response, "responses": {200: {"content": {"image/png": {}}}, **ERROR_RESPONSES},
       "dependencies": [Depends(require_token)], "tags": ["results"]}
SR = {**PNG, "responses": {200: {"content": {"application/dicom": {}}, "description": "DICOM Comprehensive SR"},
                           **ERROR_RESPONSES}}


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP,
                                                         "X-Content-Type-Options": "nosniff"})


@router.get("/healthz", response_model=HealthResponse, tags=["service"])
async def healthz(request: Request) -> dict:
    """Liveness plus the queue's state; open without a token (load balancers, the page)."""
    service, queue = request.app.state.service, request.app.state.queue
    cfg = service.config
    return {"status": "ok", "detectors": len(service.predictor.models), "gate": service.predictor.gate is not None,
            "classifier": service.classifier is not None, "token_required": cfg.token is not None,
            "queue": {"admitted": queue.admitted, "capacity": queue.capacity, "served": queue.served},
            "min_score": cfg.min_score, "max_upload_mb": cfg.max_upload_mb}


@router.get("/v1/models", tags=["models"], **API)
async def models(request: Request) -> dict:
    """The loaded artifacts: architecture, cache settings, weights' SHA-256, gate thresholds."""
    return request.app.state.service.versions


@router.post("/v1/predict", tags=["predict"], response_model=PredictResponse,
             openapi_extra={"requestBody": UPLOAD_BODY}, **API)
async def predict(request: Request) -> JSONResponse:
    """Predict one DICOM (or PNG/JPEG) sent as the multipart field ``file``."""
    service, queue, store = request.app.state.service, request.app.state.queue, request.app.state.store
    cfg = service.config
    start = time.perf_counter()
    queue.admit()  # QueueFull -> 503 before the body is read
    folder = Path(tempfile.mkdtemp(prefix="cxrdet-serve-"))
    try:
        upload = await receive_upload(request.headers.get("content-type", ""), request.headers.get("content-length"),
                                      request.stream(), folder, cfg.max_upload_bytes)
        received = time.perf_counter()
        sample = await queue.decode(upload_sample, upload, service.cache_settings,
                                    service.predictor.wants_features, cfg.max_pixels)
        decoded = time.perf_counter()
        result, waited = await queue.predict(sample)
        done = time.perf_counter()
        header = dicom_header(upload.path)  # read before the private folder goes
        request_id = new_request_id()
        store.put(request_id, result, header)
        timings = {"upload_ms": 1e3 * (received - start), "decode_ms": 1e3 * (decoded - received),
                   "queue_ms": 1e3 * waited, "model_ms": 1e3 * (done - decoded - waited)}
        body = response_body(result, request_id, service.versions, timings, cfg.conf, has_sr=header is not None,
                             class_names=service.classifier.class_names if service.classifier else None)
        body["timings"]["total_ms"] = round(1e3 * (time.perf_counter() - start), 2)
        return JSONResponse(body)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        queue.release()


@router.get("/v1/results/{request_id}/image.png", **PNG)
async def display_image(request: Request, request_id: str) -> Response:
    """The preprocessed image the detector saw (cache size, windowed), as PNG."""
    import cv2

    result = stored(request.app.state.store, request_id)
    ok, buf = cv2.imencode(".png", result.sample.image)
    return Response(buf.tobytes(), media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/v1/results/{request_id}/overlay.png", **PNG)
async def overlay(request: Request, request_id: str, min_score: float = Query(None, ge=0.0, le=1.0),
                  classes: str | None = Query(None, pattern=r"^[0-9,]*$")) -> Response:
    """The overlay PNG, drawn by the code of ``cxrdet infer --vis-dir`` (from ``min_score``,
    only ``classes``, e.g. ``0,3``, when given)."""
    import numpy as np

    from cxrdet.classes import NO_FINDING
    from cxrdet.inference.overlay import overlay_png

    result = stored(request.app.state.store, request_id)
    try:
        keep = class_filter(classes)
    except ValueError as e:
        raise UploadRejected(422, str(e)) from None
    det = result.final
    if keep is not None:
        det = det.select(np.isin(det.class_ids, keep) | (det.class_ids == NO_FINDING))
    score = request.app.state.service.config.min_score if min_score is None else min_score
    png = overlay_png(result.sample.image, det, result.sample.orig_hw, score)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/v1/results/{request_id}/sr.dcm", **SR)
async def structured_report(request: Request, request_id: str,
                            min_score: float = Query(None, ge=0.0, le=1.0)) -> Response:
    """The DICOM SR of a DICOM upload (``cxrdet infer --sr-dir``'s: TID 1500, boxes from
    ``min_score``, default the page's, as regions in original pixels, P(abnormal) and the gate's
    decision), a new series in the upload's study."""
    from cxrdet.dicomout.sr import ImageResult as SRResult
    from cxrdet.dicomout.sr import sr_bytes
    from cxrdet.errors import InputFailure

    service = request.app.state.service
    item = stored_item(request.app.state.store, request_id)
    if item.header is None:
        raise UploadRejected(422, "a DICOM SR references its source DICOM (study, series, patient): this result "
                                  "came from a PNG/JPEG upload; upload the DICOM file instead")
    result, gate = item.result, service.predictor.gate
    score = service.config.min_score if min_score is None else min_score
    dets = result.final.select(result.final.scores >= score)
    sr_result = SRResult(result.p_abnormal, gate.low if gate else None, gate.high if gate else None,
                         classifier_probabilities(service, result))
    try:
        data = sr_bytes(item.header, dets, sr_result)
    except InputFailure as e:  # e.g. the upload has no StudyInstanceUID or PatientID
        raise UploadRejected(422, str(e)) from None
    name = f"{result.sample.image_id}.sr.dcm"
    return Response(data, media_type="application/dicom",
                    headers={"Cache-Control": "no-store", "Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/v1/results/{request_id}/heatmap/{class_index}.png", **PNG)
async def heatmap(request: Request, request_id: str, class_index: int) -> Response:
    """The Grad-CAM heatmap of classifier class ``class_index`` over the display image (drawn by
    the code of ``cxrdet classify --cam-dir``); the answer's ``classifier.heatmaps`` lists them."""
    import cv2

    from cxrdet.inference.cam_pictures import cam_picture

    service = request.app.state.service
    result = stored(request.app.state.store, request_id)
    maps = (result.classifier or {}).get("heatmaps", {})
    if class_index not in maps:
        raise UploadRejected(404, f"result {request_id!r} has no heatmap of class {class_index}; it has "
                                  f"{sorted(maps) or 'none (no --classifier)'}")
    name = service.classifier.class_names[class_index]
    p = float(result.classifier["probabilities"][class_index])
    ok, buf = cv2.imencode(".png", cam_picture(result.sample.image, maps[class_index], f"{name} p={p:.2f} (Grad-CAM)"))
    return Response(buf.tobytes(), media_type="image/png", headers={"Cache-Control": "no-store"})


def classifier_probabilities(service, result) -> dict[int, float]:
    """Finding class_id -> the classifier's probability (for the SR), as infer's clf_* columns give them."""
    if service.classifier is None or result.classifier is None:
        return {}
    from cxrdet.dicomout.writer import classifier_from_row

    return classifier_from_row(dict(zip(service.classifier.columns, map(float, result.classifier["probabilities"]))))


def dicom_header(path: Path):
    """The upload's DICOM header without pixels, or None for a PNG/JPEG."""
    from cxrdet.dicomio.meta import open_header
    from cxrdet.serve.uploads import sniff

    return open_header(path) if sniff(path) == "dicom" else None


def stored(store: ResultStore, request_id: str):
    return stored_item(store, request_id).result


def stored_item(store: ResultStore, request_id: str):
    """The stored result (and upload header) of ``request_id``; 404 when unknown or expired."""
    item = store.get(request_id)
    if item is None:
        raise UploadRejected(404, f"no recent result {request_id!r} (results are kept for a few minutes); "
                                  "POST the image to /v1/predict again")
    return item


def install_error_handlers(app) -> None:
    """Every failure answers JSON ``{"detail": reason}``; the server keeps serving."""

    @app.exception_handler(UploadRejected)
    async def rejected(request: Request, e: UploadRejected) -> JSONResponse:
        return JSONResponse({"detail": e.reason}, status_code=e.status)

    @app.exception_handler(QueueFull)
    async def busy(request: Request, e: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=503, headers={"Retry-After": str(e.retry_after)})

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, e: Unauthorized) -> JSONResponse:
        return JSONResponse({"detail": "missing or wrong token: send 'Authorization: Bearer TOKEN' (the server's "
                                       "--token or CXRDET_TOKEN)"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(PredictionFailed)
    async def failed(request: Request, e: PredictionFailed) -> JSONResponse:
        return JSONResponse({"detail": f"prediction failed: {e}"}, status_code=500)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error ({type(e).__name__}); the server log has the traceback"},
                            status_code=500)
