"""Service settings, read from ``SSDLITE_*`` environment variables (or passed in by tests)."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ssdlite.runtime import BACKENDS, default_model

CommaSeparated = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Everything the service can be told; each field ``x`` is the variable ``SSDLITE_X``."""

    model_config = SettingsConfigDict(env_prefix="SSDLITE_", extra="ignore")

    model: str = Field(
        "auto",
        description="model-zoo name, or a .pt/.onnx/.tflite/.pte file; auto: tf-pedestrian-int8 on the CPU, "
        "tf-pedestrian (float) on a GPU or with backend torch (replaced by that name when the settings are read)",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    backend: Literal[("auto", *BACKENDS)] = Field(  # type: ignore[valid-type]
        "auto", description="auto: torch on CUDA when there is a GPU, else onnxruntime on the CPU"
    )
    device: str = Field("auto", description="torch device for the torch backend (auto, cpu, cuda, cuda:1)")
    threads: int | None = Field(None, ge=1, description="threads of each inference call (default: all cores)")
    # Measured with `python -m bench.service`'s client and baseline on 2 cores (load generator
    # included), INT8 model, 3 alternating rounds: 2 calls at once with batches of 2 served 133-146
    # req/s (p99 75-81 ms) against 111-116 (p99 82-99 ms) for 1 call with batches of 4 (the earlier
    # default), whose pre- and postprocessing leave a core idle; a WebSocket stream (1 frame in
    # flight) kept its fps (90-92 against 82-95). 1 thread per call instead of all cores: as many
    # req/s, but the stream lost about 10% (83-85 fps).
    inference_workers: int | None = Field(
        None, ge=1, description="inference calls at once (default: 2 for ONNX Runtime with 2 cores or more, else 1)"
    )

    max_body_size: int = Field(10 * 1024 * 1024, ge=1, description="largest request body in bytes (413 above)")
    max_pixels: int = Field(40_000_000, ge=1, description="largest image in pixels, checked before decoding (413)")
    read_timeout: float = Field(
        60.0, gt=0, description="seconds a client may take to send a request body (408 after; slow clients)"
    )
    max_files: int = Field(32, ge=1, description="most images in one /detect/batch request")
    queue_size: int = Field(32, ge=1, description="images waiting for inference before new ones get 503")
    # Measured with `python -m bench.service` on 2 cores, INT8 model, 2 inference calls at once
    # (4 rounds each, medians): batches of at most 2 served 142.5 req/s (p99 77.5 ms), of 4 140.6
    # (p99 93.8: a batch of 4 takes ~40 ms), one at a time 129.1 (p99 75.7). With 1 call at once
    # an earlier A/B had batches of 4 at 71 req/s (p99 136 ms) against 63 (p99 159 ms) one at a time.
    max_batch_size: int = Field(2, ge=1, description="most images in one inference call (1: no batching)")
    max_wait_ms: float = Field(0.0, ge=0, description="how long a non-full batch waits for more images")

    score_threshold: float = Field(0.5, ge=0, le=1, description="default minimum score")
    max_detections: int = Field(100, ge=1, le=1000, description="default detections per image")
    jpeg_quality: int = Field(90, ge=1, le=100, description="quality of rendered JPEGs")
    access_log: bool = True
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    api_keys: CommaSeparated = Field(
        default_factory=list, description="comma-separated keys; any one unlocks /detect*, /ws, /model (off if empty)"
    )
    api_keys_file: Path | None = Field(None, description="file of more API keys, one per line (# comments)")
    metrics_require_key: bool = Field(True, description="with API keys on, /metrics needs a key too (false: open)")
    cors_origins: CommaSeparated = Field(
        default_factory=list, description="comma-separated origins allowed by CORS, or * (default: none, CORS off)"
    )

    @model_validator(mode="after")
    def resolve_default_model(self):
        """``auto`` becomes the zoo model for this device and backend, so /model and the logs name what is served."""
        if self.model == "auto":
            self.model = default_model(self.device, self.backend)
        return self

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def split_commas(cls, value):
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value
