"""What the PT2E-quantized exports (``.tflite``, ``.pte``) share: calibration methods and activation observers.

The PT2E observers express min/max ranges only: of ``CALIBRATION_METHODS``, "entropy" (KL
divergence) and "percentile" have no observer (the HistogramObserver minimises the L2 quantization
error instead, which is neither).
"""

from typing import Any

from .int8 import CALIBRATION_METHODS, CalibrationError

PT2E_CALIBRATION_METHODS = ("average-minmax", "minmax")


def check_calibration_method(method: str, suffix: str):
    """Raises :class:`CalibrationError` for a method the ``suffix`` format's PT2E quantizer cannot express."""
    if method in PT2E_CALIBRATION_METHODS:
        return
    choices = " or ".join(PT2E_CALIBRATION_METHODS)
    if method in CALIBRATION_METHODS:
        raise CalibrationError(
            f"calibration method {method!r} is not available for {suffix} (its quantizer has min/max observers "
            f"only); use {choices}, or export to .onnx"
        )
    raise CalibrationError(f"calibration method must be {choices} for {suffix}, got {method!r}")


def activation_observer(method: str) -> Any:
    """The PT2E observer constructor that gives activations ``method``'s ranges, as the ONNX INT8 export does.

    ``average-minmax``: the mean over the calibration images of each image's min and max (a moving
    average whose constant is 1/n is the running mean). ``minmax``: the extremes over all images.
    """
    from torchao.quantization.pt2e.observer import MinMaxObserver, MovingAverageMinMaxObserver

    class MeanMinMaxObserver(MovingAverageMinMaxObserver):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.images_seen = 0

        def forward(self, x_orig):
            self.images_seen += 1
            self.averaging_constant = 1 / self.images_seen
            return super().forward(x_orig)

    observer = {"average-minmax": MeanMinMaxObserver, "minmax": MinMaxObserver}[method]
    return observer.with_args(eps=2**-12)
