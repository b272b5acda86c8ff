"""End-to-end single-image detection latency on the CPU, ours vs torchvision's SSDLite.

``python -m bench.latency [--iterations N] [--threads T]``: a 640x480 RGB uint8 array in,
detections out, for ``ssdlite320_mobilenet_v2`` (91 classes) on the torch and ONNX Runtime
backends and for torchvision's ``ssdlite320_mobilenet_v3_large`` through its ``model([img])``
call. Both models get background-dominant class biases so NMS sees trained-like scores.
"""

import argparse

import numpy as np
import torch
import torchvision

from ssdlite import PRESETS, Detector, build_model
from ssdlite.export import OnnxRuntimeBackend, export_onnx

from .common import (
    count_parameters,
    machine_description,
    make_background_dominant,
    multiply_adds,
    time_call,
    write_json,
)

NUM_CLASSES = 91


def our_model(name: str = "ssdlite320_mobilenet_v2"):
    model = build_model(name, num_classes=NUM_CLASSES).eval()
    sigmoid = model.config.score_function == "sigmoid"
    make_background_dominant([p[-1] for p in model.class_head.predictors], NUM_CLASSES, sigmoid)
    return model


def torchvision_model():
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES
    ).eval()
    make_background_dominant([m[-1] for m in model.head.classification_head.module_list], NUM_CLASSES)
    return model


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
    ours_torch = Detector.from_model(model, class_names)
    runtime = OnnxRuntimeBackend(export_onnx(model, class_names), threads=args.threads)
    ours_onnx = Detector(runtime, model.config, class_names)
    tv_model = torchvision_model()

    @torch.inference_mode()
    def run_torchvision():
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
        return tv_model([tensor])

    candidates = {
        "ours (onnxruntime)": lambda: ours_onnx.predict(image),
        "ours (torch)": lambda: ours_torch.predict(image),
        "torchvision ssdlite320_mobilenet_v3_large": run_torchvision,
    }
    results = {name: time_call(fn, args.iterations) for name, fn in candidates.items()}
    baseline = results["torchvision ssdlite320_mobilenet_v3_large"]["p50"]
    print(f"640x480 RGB -> detections, {args.threads} threads, {args.iterations} runs, {machine_description()}")
    print(f"{'model':45s} {'p50 ms':>8s} {'p95 ms':>8s} {'speed-up vs torchvision (p50)':>30s}")
    for name, r in results.items():
        r["speedup_vs_torchvision"] = baseline / r["p50"]
        print(f"{name:45s} {r['p50']:8.1f} {r['p95']:8.1f} {r['speedup_vs_torchvision']:29.2f}x")
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
    detections = {"ours": len(ours_onnx.predict(image)), "torchvision": len(run_torchvision()[0]["boxes"])}
    print(f"detections returned on the benchmark image: {detections}")
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
