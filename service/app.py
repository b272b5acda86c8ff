"""The app factory: ``create_app(settings)``; its lifespan loads the model once and warms it up."""

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from . import api
from .decoding import ImageError, warm_up_decoder
from .engine import EngineStoppedError, InferenceEngine, QueueFullError
from .limits import BodyLimitMiddleware
from .metrics import HTTPMetricsMiddleware, Metrics
from .settings import Settings

logger = logging.getLogger("service")


def create_app(settings: Settings | None = None, detector=None) -> FastAPI:
    """Builds the app; nothing heavy happens until its lifespan starts.

    Args:
        settings: the configuration (default: read from ``SSDLITE_*`` environment variables).
        detector: an already loaded ``ssdlite.Detector`` to serve instead of ``settings.model``
            (``python -m service`` loads it first to report a bad model cleanly; tests inject fakes).
    """
    settings = settings or Settings()
    metrics = Metrics(settings.max_batch_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from .model import describe, load_detector, warm_up

        state = app.state
        state.ready = False
        loaded = detector or await asyncio.to_thread(load_detector, settings)
        state.detector = loaded
        state.model_info = describe(loaded, settings)
        state.decoder = ThreadPoolExecutor(2, thread_name_prefix="decode")
        state.engine = InferenceEngine(
            loaded.predict_batch,
            max_batch_size=settings.max_batch_size,
            queue_size=settings.queue_size,
            max_wait_ms=settings.max_wait_ms,
            on_batch=metrics.observe_batch,
            on_queue_depth=metrics.queue_depth.set,
        )
        await asyncio.to_thread(warm_up, loaded, settings.max_batch_size)
        await asyncio.get_running_loop().run_in_executor(state.decoder, warm_up_decoder)
        await state.engine.start()
        state.ready = True
        metrics.ready.set(1)
        logger.info("model %s ready (%s)", state.model_info.name, state.model_info.backend)
        try:
            yield
        finally:
            state.ready = False
            metrics.ready.set(0)
            await state.engine.stop()
            state.decoder.shutdown(wait=True)

    app = FastAPI(
        title="SSDLite detection service",
        summary="Real-time object detection over HTTP and WebSocket",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.ready = False
    app.add_middleware(BodyLimitMiddleware, max_body_size=settings.max_body_size)
    app.add_middleware(HTTPMetricsMiddleware, metrics=metrics)  # added last: outermost, so it sees every 413
    app.include_router(api.detection)
    app.include_router(api.stream)
    app.include_router(api.operations)
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

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, 500)

    return app
