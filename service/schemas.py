"""Response bodies (they also document the API at /docs)."""

from pydantic import BaseModel, Field


class Detection(BaseModel):
    box: list[float] = Field(description="[x1, y1, x2, y2] in the uploaded image's pixels (EXIF orientation applied)")
    score: float
    class_id: int = Field(description="label index; 0 is background and never returned")
    label: str


class Timing(BaseModel):
    decode: float = Field(description="ms spent decoding the upload")
    queue: float = Field(description="ms waiting for the inference thread")
    inference: float = Field(description="ms of the inference call (shared by its batch)")
    total: float = Field(description="ms from the upload's bytes to the response")
    batch_size: int = Field(description="images in the inference call that served this one")


class DetectResponse(BaseModel):
    width: int
    height: int
    model: str
    detections: list[Detection]
    timing_ms: Timing


class BatchItem(BaseModel):
    filename: str | None
    width: int
    height: int
    detections: list[Detection]
    timing_ms: Timing


class BatchResponse(BaseModel):
    model: str
    results: list[BatchItem]


class ModelInfo(BaseModel):
    name: str
    classes: list[str]
    input_size: int
    backend: str
    precision: str = Field(description='"float32" or "int8" (an INT8 export)')
    device: str
    max_batch_size: int
    score_threshold: float
    max_detections: int


class Problem(BaseModel):
    detail: str | list[dict] = Field(description="what was wrong (a list of field errors for malformed parameters)")


class Health(BaseModel):
    status: str
