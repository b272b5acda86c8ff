"""End-to-end single-image detection latency on the CPU, ours vs torchvision's SSDLite.

``python -m bench.latency [--iterations N] [--threads T]``: a 640x480 RGB uint8 array in,
detections out, for ``ssdlite320_mobilenet_v2`` (91 classes) on the torch and ONNX Runtime
backends (float32, and INT8 calibrated on the two photos ssdlite ships, through
``Detector.predict`` and as an end-to-end graph run with onnxruntime + numpy alone) and for
torchvision's ``ssdlite320_mobilenet_v3_large`` through its ``model([img])`` call. Both models get
background-dominant class biases so NMS sees trained-like scores.
"""

import argparse

import cv2
import numpy as np
import torch
import torchvision

from ssdlite import PRESETS, Detector, build_model
from ssdlite.deploy import export_onnx
from ssdlite.deploy.int8 import load_calibration_images
from ssdlite.images import SAMPLE_PHOTOS
from ssdlite.runtime.backends import OnnxRuntimeBackend, onnxruntime_session

from .common import (
    count_parameters,
    machine_description,
    make_background_dominant,
    multiply_adds,
    time_call,
    write_json,
)

NUM_CLASSES = 91
TORCHVISION = "torchvision ssdlite320_mobilenet_v3_large"
FLOAT_ORT = "ours onnxruntime float32"
TORCH_ROW = "ours torch float32"


def our_model(name: str = "ssdlite320_mobilenet_v2"):
    model = build_model(name, num_classes=NUM_CLASSES).eval()
    sigmoid = model.config.postprocess.score_function == "sigmoid"
    make_background_dominant([p[-1] for p in model.class_head.predictors], NUM_CLASSES, sigmoid)
    return model


def torchvision_model():
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES
    ).eval()
    make_background_dominant([m[-1] for m in model.head.classification_head.module_list], NUM_CLASSES)
    return model


def end_to_end_detect(session, image: np.ndarray, size: int):
    """What the README shows for an ``--end-to-end`` export: onnxruntime and numpy, nothing else."""
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    batch = resized.transpose(2, 0, 1)[None].astype(np.float32)
    boxes, scores, labels, counts = session.run(None, {"images": batch})
    n = counts[0]
    height, width = image.shape[:2]
    return boxes[0, :n] * [width, height, width, height], scores[0, :n], labels[0, :n]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--all-presets", action="store_true", help="also time every preset on onnxruntime")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    class_names = [f"class{i}" for i in range(1, NUM_CLASSES)]

    model = our_model()
    size = model.config.image_size
    calibration = load_calibration_images(SAMPLE_PHOTOS, model.config).images
    float_onnx = export_onnx(model, class_names)
    int8_onnx = export_onnx(model, class_names, calibration=calibration)
    int8_end_to_end = onnxruntime_session(
        export_onnx(model, class_names, calibration=calibration, end_to_end=True), args.threads
    )
    detectors = {
        TORCH_ROW: Detector.from_model(model, class_names),
        FLOAT_ORT: Detector(OnnxRuntimeBackend(float_onnx, args.threads), model.config, class_names),
        "ours onnxruntime int8": Detector(OnnxRuntimeBackend(int8_onnx, args.threads), model.config, class_names),
    }
    tv_model = torchvision_model()

    @torch.inference_mode()
    def run_torchvision():
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
        return tv_model([tensor])

    candidates = {name: (lambda d=detector: d.predict(image)) for name, detector in detectors.items()}
    candidates["ours int8 end-to-end graph (onnxruntime + numpy)"] = lambda: end_to_end_detect(
        int8_end_to_end, image, size
    )
    candidates[TORCHVISION] = run_torchvision
    results = {}
    for name, fn in candidates.items():
        # ONNX Runtime rows run as the service runs them: torch (resize, postprocess) on one
        # thread, so its pool does not fight ONNX Runtime's for the cores.
        torch.set_num_threads(args.threads if name in (TORCH_ROW, TORCHVISION) else 1)
        results[name] = time_call(fn, args.iterations)
    torch.set_num_threads(args.threads)
    baseline, float_p50 = results[TORCHVISION]["p50"], results[FLOAT_ORT]["p50"]
    print(f"640x480 RGB -> detections, {args.threads} threads, {args.iterations} runs, {machine_description()}")
    print(f"{'model':50s} {'p50 ms':>7s} {'p95 ms':>7s} {'vs torchvision (p50)':>21s} {'vs float ORT (p50)':>19s}")
    for name, r in results.items():
        r["speedup_vs_torchvision"] = baseline / r["p50"]
        r["time_vs_float_onnxruntime"] = r["p50"] / float_p50
        print(
            f"{name:50s} {r['p50']:7.1f} {r['p95']:7.1f} {r['speedup_vs_torchvision']:20.2f}x "
            f"{r['time_vs_float_onnxruntime']:18.2f}x"
        )
    if args.all_presets:
        print(f"\nevery preset on onnxruntime ({NUM_CLASSES} classes):")
        print(f"{'preset':33s} {'input':>5s} {'params':>7s} {'MAdds':>6s} {'p50 ms':>8s} {'p95 ms':>8s}")
        for name in PRESETS:
            preset_model = our_model(name)
            size = preset_model.config.image_size
            runtime = OnnxRuntimeBackend(export_onnx(preset_model, class_names), threads=args.threads)
            detector = Detector(runtime, preset_model.config, class_names)
            timing = time_call(lambda d=detector: d.predict(image), args.iterations)
            timing["params"] = count_parameters(preset_model)
            timing["multiply_adds"] = multiply_adds(preset_model, size)
            results[f"{name} (onnxruntime)"] = timing
            print(
                f"{name:33s} {size:5d} {timing['params'] / 1e6:6.2f}M {timing['multiply_adds'] / 1e9:5.2f}B "
                f"{timing['p50']:8.1f} {timing['p95']:8.1f}"
            )
    detections = {
        "ours float32": len(detectors[FLOAT_ORT].predict(image)),
        "ours int8 end-to-end": len(end_to_end_detect(int8_end_to_end, image, size)[1]),
        "torchvision": len(run_torchvision()[0]["boxes"]),
    }
    print(f"detections returned on the benchmark image: {detections}")
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
