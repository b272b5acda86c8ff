"""What a started app serves with: one typed object, built by the lifespan and reached through ``Depends``."""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from .engine import EngineStoppedError, InferenceEngine
from .metrics import Metrics
from .schemas import ModelInfo
from .settings import Settings


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    metrics: Metrics
    detector: object  # ssdlite.Detector, or anything with its predict_batch, class_names and config
    model_info: ModelInfo
    engine: InferenceEngine
    decoder: ThreadPoolExecutor  # decoding and JPEG rendering, off the event loop

    @property
    def ready(self) -> bool:
        """Loaded, warmed up and not shutting down (the lifespan stops the engine first on shutdown)."""
        return self.engine.running


async def get_runtime(connection: HTTPConnection) -> Runtime:
    """The lifespan's :class:`Runtime` (the lifespan yields it as state, which Starlette gives every request).

    ``async`` though it never waits: FastAPI runs a plain ``def`` dependency on its thread pool, a
    thread hop per request for an attribute lookup.

    Raises:
        EngineStoppedError: the lifespan has not started (503).
    """
    runtime = getattr(connection.state, "runtime", None)
    if runtime is None:
        raise EngineStoppedError("the model is not loaded yet or the server is shutting down")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
