"""Settable anchor aspect ratios and scales, and the anchor-fit report the trainer prints."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from ssdlite import SSDLiteConfig, build_model, export_onnx, get_config, load_checkpoint, save_checkpoint
from ssdlite.core.anchors import anchors_for, num_anchors_per_location
from ssdlite.core.boxes import cxcywh_to_xyxy, pairwise_iou
from ssdlite.runtime import load_backend
from train import anchor_fit
from train import coco as train_coco
from train.anchor_fit import TrainingBoxes, anchor_layout, best_anchor_iou, measure, training_boxes
from train.config import UsageError, parse_args, resolve_config
from train.data import CocoDetection
from train.modeling import build_train_model
from train.transforms import build_transform

from .test_train_modeling import config_from

REPO = Path(__file__).resolve().parents[1]
BASE = get_config("ssdlite320_mobilenet_v2")
NAMES = ["cat", "dog", "bird"]


def boxes_of(xyxy, image_px: float = 640.0) -> TrainingBoxes:
    xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
    return TrainingBoxes(xyxy, np.full((len(xyxy), 2), image_px), len(xyxy))


def random_boxes(rng, count: int, width: float, height: float) -> np.ndarray:
    """Boxes of one size (normalised) at random places inside the image."""
    x1 = rng.uniform(0, 1 - width, count)
    y1 = rng.uniform(0, 1 - height, count)
    return np.stack([x1, y1, x1 + width, y1 + height], axis=1)


def config_with(base: SSDLiteConfig, flags: str) -> SSDLiteConfig:
    """``base`` changed as the trainer's flags would change it (parsed and checked by resolve_config)."""
    config = resolve_config(*parse_args(flags.split()))
    changes = {k: getattr(config, k) for k in ("image_size", "min_scale", "max_scale", "aspect_ratios")}
    if "--image-size" not in flags:
        del changes["image_size"]  # the embedded recipe's 160 otherwise
    return base.replace(**{k: v for k, v in changes.items() if v is not None})


def share_of(config: SSDLiteConfig, boxes: TrainingBoxes) -> float:
    return measure(config, boxes).share


# --- the figures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [BASE, get_config("ssdlite300_mobilenet_v2_tf"), BASE.replace(image_size=160, aspect_ratios=(2.0, 3.0, 7.0))],
    ids=["ssd", "tf", "ssd-ratios-2-3-7"],
)
def test_best_iou_on_the_grid_equals_the_iou_against_every_anchor(config):
    rng = np.random.default_rng(0)
    centres = rng.uniform(0, 1, (3000, 2))
    sizes = np.exp(rng.uniform(np.log(0.003), np.log(1.0), (3000, 2)))
    boxes = np.clip(np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1), 0, 1)
    anchors = anchors_for(config)
    every = pairwise_iou(torch.from_numpy(boxes), cxcywh_to_xyxy(anchors.double())).amax(dim=1).numpy()
    np.testing.assert_allclose(best_anchor_iou(anchors, boxes, anchor_layout(config)), every, atol=1e-12)
    with pytest.raises(ValueError, match="do not follow the layout"):
        best_anchor_iou(anchors[:-1], boxes, anchor_layout(config))


def test_boxes_equal_to_anchors_all_match():
    anchors = anchors_for(BASE)
    corners = cxcywh_to_xyxy(anchors.double()).numpy()
    inside = corners[((corners >= 0) & (corners <= 1)).all(axis=1)]
    chosen = inside[np.random.default_rng(0).choice(len(inside), 200, replace=False)]
    fit = measure(BASE, boxes_of(chosen))
    assert (fit.boxes, fit.matched, fit.share, fit.below, fit.median_best_iou) == (200, 200, 1.0, 0, pytest.approx(1.0))
    assert fit.warning is None and fit.alternatives == []
    assert fit.summary() == "anchor fit: 100% of 200 training boxes match an anchor at IoU 0.5 (median best IoU 1.00)"


def test_tiny_boxes_match_nothing_and_the_suggestion_measured_does_match_more():
    # 2x2 px boxes in 32x32 px images: 20 px at the 320 px input, where anchors start at 64 px.
    boxes = boxes_of(random_boxes(np.random.default_rng(1), 500, 2 / 32, 2 / 32), image_px=32)
    fit = measure(BASE, boxes)
    assert fit.share == 0.0 and fit.below == fit.below_small == 500 and fit.below_elongated == 0
    assert fit.below_median_input_px == pytest.approx((20, 20)) and fit.below_median_image_px == pytest.approx((2, 2))
    assert fit.smallest_anchor_px == pytest.approx(64, abs=1e-3)
    assert "0.0% of 500 training boxes" in fit.summary() and "500 too small (anchors start at 64 px)" in fit.summary()
    assert "they still train through their best anchor, but weakly" in fit.summary()  # match_anchors does that
    assert fit.warning.startswith("warning: anchor fit: only 0.0% of the training boxes can match an anchor;")
    assert fit.alternatives and "--anchor-scales" in fit.alternatives[0].flags
    for alternative in fit.alternatives:  # each suggestion, applied through the trainer's flags, measures as said
        assert f"{alternative.flags} -> {alternative.share:.1%}" in fit.warning
        assert share_of(config_with(BASE, alternative.flags), boxes) == pytest.approx(alternative.share)
    assert fit.alternatives[-1].share > 0.5
    assert [a.share for a in fit.alternatives] == sorted(a.share for a in fit.alternatives)


def test_elongated_boxes_fail_with_ratios_2_3_and_match_with_ratio_10_added():
    rng = np.random.default_rng(2)
    boxes = boxes_of(np.concatenate([random_boxes(rng, 200, 0.5, 0.05), random_boxes(rng, 200, 0.05, 0.5)]))
    fit = measure(BASE, boxes)
    assert fit.share < 0.05 and fit.below_elongated == fit.below and fit.below_max_ratio == pytest.approx(10)
    assert "elongated (side ratio over 3, up to 10)" in fit.summary()
    assert "--aspect-ratios 2,3,10" in fit.warning
    with_ten = share_of(BASE.replace(aspect_ratios=(2.0, 3.0, 10.0)), boxes)
    assert with_ten > fit.share + 0.5
    # Fine-tuning keeps the heads, so no ratio is suggested then; nor for the TF style's fixed ratios.
    assert "--aspect-ratios" not in measure(BASE, boxes, ratios_fixed=True).warning
    assert "--aspect-ratios" not in measure(get_config("ssdlite300_mobilenet_v2_tf"), boxes).warning


def test_training_boxes_are_the_boxes_the_model_sees(tmp_path):
    """The records' boxes, normalised to their image, equal the evaluation pipeline's (resize only)."""
    (tmp_path / "images").mkdir()
    images, annotations = [], []
    for i, (width, height) in enumerate([(64, 48), (40, 100)], start=1):
        Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(tmp_path / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": width, "height": height})
        for j, (bbox, crowd) in enumerate([([2, 3, 20, 10], 0), ([10, 5, 25, 30], 0), ([0, 0, 30, 30], 1)]):
            annotations.append({"id": 10 * i + j, "image_id": i, "category_id": 1, "bbox": bbox, "iscrowd": crowd})
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    dataset = CocoDetection(coco, tmp_path / "images", transform=build_transform(96, train=False))
    boxes = training_boxes(dataset.records)
    assert boxes.total == len(boxes) == 4  # the crowd boxes are left out, as the matcher leaves them
    seen = np.concatenate([dataset[i]["boxes"][~dataset[i]["iscrowd"]] for i in range(len(dataset))])
    np.testing.assert_allclose(boxes.boxes, seen, atol=1e-6)
    np.testing.assert_array_equal(boxes.image_sizes, [[64, 48], [64, 48], [40, 100], [40, 100]])
    sample = training_boxes(dataset.records, max_boxes=3)
    assert (len(sample), sample.total) == (3, 4)
    assert "of a sample of 3 of the 4 training boxes match" in measure(BASE, sample).summary()


def test_the_report_is_json_and_fast():
    rng = np.random.default_rng(3)
    sizes = np.exp(rng.uniform(np.log(0.01), np.log(0.9), (anchor_fit.MAX_BOXES, 2)))
    centres = rng.uniform(0, 1, (anchor_fit.MAX_BOXES, 2))
    boxes = boxes_of(np.clip(np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1), 0, 1))
    fit = measure(BASE, boxes)  # the worst case: a warning, so every alternative is measured too
    assert fit.warning and len(fit.alternatives) >= 2
    values = json.loads(json.dumps(fit.to_dict()))
    assert values["boxes"] == anchor_fit.MAX_BOXES and values["warning"] == fit.warning
    assert values["alternatives"][0] == {"flags": fit.alternatives[0].flags, "share": fit.alternatives[0].share}


# --- settable ratios -----------------------------------------------------------------------------


def test_aspect_ratios_set_the_anchor_count_and_the_heads():
    model = build_model(num_classes=4, width_mult=0.35, image_size=96, aspect_ratios=[2, 3, 5]).eval()
    assert model.config.aspect_ratios == (2.0, 3.0, 5.0)  # a list or ints are kept as a tuple of floats
    assert num_anchors_per_location("ssd", aspect_ratios=(2.0, 3.0, 5.0)) == [8] * 6
    default = build_model(num_classes=4, width_mult=0.35, image_size=96)
    assert model.anchors.shape[0] == default.anchors.shape[0] * 8 // 6
    assert [p[-1].out_channels for p in model.box_head.predictors] == [8 * 4] * 6
    assert [p[-1].out_channels for p in model.class_head.predictors] == [8 * 4] * 6
    boxes, logits = model(torch.rand(1, 3, 96, 96) * 255)
    assert boxes.shape == (1, model.anchors.shape[0], 4) and logits.shape == (1, model.anchors.shape[0], 4)
    only_square_and_2 = build_model(num_classes=4, width_mult=0.35, image_size=96, aspect_ratios=(2,))
    assert only_square_and_2.anchors.shape[0] == default.anchors.shape[0] * 4 // 6


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"aspect_ratios": ()}, "aspect_ratios needs at least one ratio"),
        ({"aspect_ratios": (2.0, 0.0)}, "aspect_ratios must be positive"),
        ({"aspect_ratios": ("wide",)}, "aspect_ratios must be numbers"),
        ({"min_scale": 0.95, "max_scale": 0.5}, "0 < min_scale < max_scale"),
        ({"anchor_style": "tf", "aspect_ratios": (2.0, 4.0)}, "the 'tf' anchor style has fixed aspect ratios"),
    ],
)
def test_bad_anchor_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        SSDLiteConfig(**changes)


def test_old_config_dicts_without_aspect_ratios_still_load():
    values = BASE.to_dict()
    assert values["aspect_ratios"] == (2.0, 3.0)
    del values["aspect_ratios"]
    assert SSDLiteConfig.from_dict(values) == BASE


def test_custom_ratios_survive_checkpoints_and_onnx_export(tmp_path):
    torch.manual_seed(0)
    model = build_model(num_classes=4, width_mult=0.35, image_size=96, aspect_ratios=(2.0, 3.0, 5.0)).eval()
    image = torch.rand(2, 3, 96, 96) * 255
    with torch.no_grad():
        expected = model(image)
    checkpoint = save_checkpoint(tmp_path / "ratios.pt", model, NAMES)
    loaded, _ = load_checkpoint(checkpoint)
    assert loaded.config == model.config and loaded.config.aspect_ratios == (2.0, 3.0, 5.0)
    onnx_file = tmp_path / "ratios.onnx"
    export_onnx(model, NAMES, onnx_file)
    for source in (checkpoint, onnx_file):
        backend = load_backend(source)
        assert backend.config.aspect_ratios == (2.0, 3.0, 5.0)
        for got, want in zip(backend(image), expected, strict=True):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # The end-to-end graph decodes against the anchors of the config, ratios included.
    end_to_end = onnx.load_from_string(export_onnx(model, NAMES, end_to_end=True))
    constants = [onnx.numpy_helper.to_array(t) for t in end_to_end.graph.initializer]
    constants += [
        onnx.numpy_helper.to_array(a.t) for n in end_to_end.graph.node if n.op_type == "Constant" for a in n.attribute
    ]
    anchors = anchors_for(model.config).numpy()
    assert any(c.shape == anchors.shape and np.allclose(c, anchors) for c in constants)


# --- the trainer's flags -------------------------------------------------------------------------


def test_flags_reach_the_model():
    config = config_from(["--anchor-scales", "0.1,0.9", "--aspect-ratios", "2,3,5"])
    assert (config.min_scale, config.max_scale, config.aspect_ratios) == (0.1, 0.9, (2.0, 3.0, 5.0))
    model = build_train_model(config, NAMES).model
    assert (model.config.min_scale, model.config.max_scale, model.config.aspect_ratios) == (0.1, 0.9, (2.0, 3.0, 5.0))
    assert model.config.image_size == 160  # the embedded recipe's, untouched
    older = config_from(["--min-scale", "0.1"])
    assert (older.min_scale, older.max_scale, older.aspect_ratios) == (0.1, None, None)
    assert build_train_model(older, NAMES).model.config.max_scale == BASE.max_scale
    assert config_from([]).aspect_ratios is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--anchor-scales", "0.1"], r"^--anchor-scales 0.1: give MIN,MAX with 0 < MIN < MAX <= 1.5, e.g. 0.1,0.95$"),
        (["--anchor-scales", "0.5,0.2"], r"^--anchor-scales 0.5,0.2: give MIN,MAX with 0 < MIN < MAX"),
        (["--anchor-scales", "0.1,2"], r"^--anchor-scales 0.1,2: give MIN,MAX with 0 < MIN < MAX <= 1.5"),
        (["--anchor-scales", "a,b"], r"^--anchor-scales a,b: not a comma-separated list of numbers$"),
        (["--anchor-scales", "0.1,nan"], r"^--anchor-scales 0.1,nan: not a comma-separated list of numbers$"),
        (["--anchor-scales", "0.1,0.9", "--min-scale", "0.1"], r"^give --anchor-scales MIN,MAX or --min-scale, not"),
        (["--min-scale=-0.1"], r"^--min-scale -0.1: give a scale between 0 and 1.5"),
        (["--min-scale", "0.96"], r"^--min-scale 0.96: not below the last map's scale 0.95 of preset ssdlite320"),
        (["--aspect-ratios", ""], r"^--aspect-ratios '': not a comma-separated list of numbers$"),
        (["--aspect-ratios", "2,,3"], r"^--aspect-ratios 2,,3: not a comma-separated list of numbers$"),
        (["--aspect-ratios=-2,3"], r"^--aspect-ratios -2,3: give ratios greater than 0, e.g. 2,3,5$"),
        (["--aspect-ratios", "2,0"], r"^--aspect-ratios 2,0: give ratios greater than 0"),
        (
            ["--model", "ssdlite300_mobilenet_v2_tf", "--aspect-ratios", "2,4"],
            r"^--aspect-ratios 2,4: preset ssdlite300_mobilenet_v2_tf has 'tf'-style anchors, whose aspect ratios",
        ),
    ],
)
def test_bad_anchor_flags_give_one_line_errors(argv, message):
    with pytest.raises(UsageError, match=message) as error:
        config_from(argv)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--aspect-ratios", "2,x"], "error: --aspect-ratios 2,x: not a comma-separated list of numbers\n"),
        (["--anchor-scales", "0.5,0.2"], "error: --anchor-scales 0.5,0.2: give MIN,MAX with 0 < MIN < MAX <= 1.5"),
    ],
)
def test_bad_anchor_flags_on_the_command_line(flags, message, tmp_path):
    # Data that does not exist: the flags are refused before any is read.
    data = ["--train-ann", str(tmp_path / "no.json"), "--train-images", str(tmp_path)]
    data += ["--val-ann", str(tmp_path / "no.json"), "--val-images", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-m", "train.coco", *data, *flags], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and result.stderr.startswith(message) and result.stderr.count("\n") == 1


@pytest.fixture
def ssd_checkpoint(tmp_path) -> str:
    torch.manual_seed(0)
    model = build_model(num_classes=len(NAMES) + 1, width_mult=0.35, image_size=96)
    return str(save_checkpoint(tmp_path / "ssd.pt", model, NAMES))


def test_init_refuses_ratios_that_change_the_heads_before_any_data_is_read(ssd_checkpoint, tmp_path, capsys):
    missing = ["--train-ann", str(tmp_path / "no.json"), "--train-images", str(tmp_path / "nothing")]
    missing += ["--val-ann", str(tmp_path / "no.json"), "--val-images", str(tmp_path / "nothing")]
    assert train_coco.main(["--init", ssd_checkpoint, "--aspect-ratios", "2,3,5", *missing]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: --aspect-ratios 2,3,5: 8 anchors per location, but the heads of the --init checkpoint "
        f"{ssd_checkpoint} have 6 (aspect ratios 2,3); give 2 ratios or train without --init\n"
    )
    tf_style = build_model("ssdlite300_mobilenet_v2_tf", num_classes=2, width_mult=0.35, image_size=96)
    tf_checkpoint = save_checkpoint(tmp_path / "tf.pt", tf_style, ["person"])
    with pytest.raises(UsageError, match=r"^--aspect-ratios 2,4: the --init checkpoint .*tf.pt has 'tf'-style"):
        config_from(["--init", str(tf_checkpoint), "--aspect-ratios", "2,4"])


def test_init_takes_scales_and_as_many_ratios_as_its_heads(ssd_checkpoint):
    source, _ = load_checkpoint(ssd_checkpoint)
    config = config_from(["--init", ssd_checkpoint, "--anchor-scales", "0.1,0.9", "--aspect-ratios", "2,4"])
    built = build_train_model(config, NAMES)
    model = built.model
    assert (model.config.min_scale, model.config.max_scale, model.config.aspect_ratios) == (0.1, 0.9, (2.0, 4.0))
    assert built.reinitialised == []  # same classes, same heads: every weight loads
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    assert not torch.equal(model.anchors, source.anchors)
