"""The app factory: ``create_app(settings)``; its lifespan loads the model once, warms it up and yields the Runtime."""

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.requests import ClientDisconnect

from . import api
from .auth import ApiKeyGuard, load_api_keys, redact_api_keys_in_logs
from .decoding import ImageError, warm_up_decoder
from .engine import EngineStoppedError, InferenceEngine, InferenceError, QueueFullError
from .limits import BodyLimitMiddleware
from .metrics import HTTPMetricsMiddleware, Metrics
from .model import describe, engine_workers, load_detector, warm_up
from .runtime import Runtime
from .settings import Settings

logger = logging.getLogger("service")


def create_app(settings: Settings | None = None, detector=None) -> FastAPI:
    """Builds the app; nothing heavy happens until its lifespan starts.

    Args:
        settings: the configuration (default: read from ``SSDLITE_*`` environment variables).
        detector: an already loaded ``ssdlite.Detector`` to serve instead of ``settings.model``
            (``python -m service`` loads it first to report a bad model cleanly; tests inject fakes).

    Raises:
        ApiKeyConfigError: ``SSDLITE_API_KEYS``/``SSDLITE_API_KEYS_FILE`` cannot be used.
    """
    settings = settings or Settings()
    metrics = Metrics(settings.max_batch_size)
    api_keys = load_api_keys(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        redact_api_keys_in_logs()  # here, after uvicorn has configured its loggers
        loaded = detector or await asyncio.to_thread(load_detector, settings)
        workers = engine_workers(loaded, settings)
        decoder = ThreadPoolExecutor(2, thread_name_prefix="decode")
        engine = InferenceEngine(
            loaded.predict_batch,
            max_batch_size=settings.max_batch_size,
            queue_size=settings.queue_size,
            max_wait_ms=settings.max_wait_ms,
            on_batch=metrics.observe_batch,
            on_queue_depth=metrics.queue_depth.set,
            workers=workers,
        )
        runtime = Runtime(settings, metrics, loaded, describe(loaded, settings), engine, decoder)
        await asyncio.to_thread(warm_up, loaded, settings.max_batch_size)
        await asyncio.get_running_loop().run_in_executor(decoder, warm_up_decoder)
        await engine.start()
        metrics.ready.set(1)
        info = runtime.model_info
        logger.info(
            "model %s ready (%s %s; %d inference call(s) at once, batches of up to %d)",
            *(info.name, info.backend, info.precision, workers, settings.max_batch_size),
        )
        if api_keys:
            logger.info("API keys required: %d key(s) configured", len(api_keys))
        try:
            yield {"runtime": runtime}
        finally:
            metrics.ready.set(0)
            await engine.stop()
            decoder.shutdown(wait=True)

    app = FastAPI(
        title="SSDLite detection service",
        summary="Real-time object detection over HTTP and WebSocket",
        version="0.1.0",
        lifespan=lifespan,
    )
    # Added innermost first: metrics sees every response (the 413s and 408s included), CORS adds
    # its headers to those too.
    app.add_middleware(BodyLimitMiddleware, max_body_size=settings.max_body_size, read_timeout=settings.read_timeout)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=["X-Detections", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(HTTPMetricsMiddleware, metrics=metrics)
    guarded = [Depends(ApiKeyGuard(api_keys))] if api_keys else []
    app.include_router(api.detection, dependencies=guarded)
    app.include_router(api.stream, dependencies=guarded)
    app.include_router(api.model, dependencies=guarded)
    app.include_router(api.monitoring, dependencies=guarded if settings.metrics_require_key else [])
    app.include_router(api.health)
    app.include_router(api.page)
    app.mount("/static", StaticFiles(directory=api.STATIC_DIR), name="static")

    @app.exception_handler(ImageError)
    async def bad_image(request: Request, error: ImageError):
        return JSONResponse({"detail": error.detail}, status_code=error.status)

    @app.exception_handler(QueueFullError)
    async def queue_full(request: Request, error: QueueFullError):
        return JSONResponse({"detail": f"server busy: {error}; retry shortly"}, 503, headers={"Retry-After": "1"})

    @app.exception_handler(EngineStoppedError)
    async def not_running(request: Request, error: EngineStoppedError):
        return JSONResponse({"detail": str(error)}, 503, headers={"Retry-After": "5"})

    @app.exception_handler(InferenceError)
    async def inference_failed(request: Request, error: InferenceError):
        return JSONResponse({"detail": str(error)}, 500)  # the engine logged the traceback once per batch

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, error: ClientDisconnect):
        return Response(status_code=499)  # nobody is left to read it; not an error of ours

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, 500)

    return app
