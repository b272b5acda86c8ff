import pytest
import torch

from bench.common import count_parameters, multiply_adds
from ssdlite import PRESETS, SSDLiteConfig, build_model, get_config
from ssdlite.core.anchors import feature_map_sizes, generate_anchors, num_anchors_per_location


def test_mobilenet_v2_ssdlite_matches_paper_size():
    # Sandler et al. 2018, Table 6: SSDLite-MobileNetV2, 80 classes + background: 4.3M params, 0.8B MAdds at 300.
    model = build_model("ssdlite320_mobilenet_v2", num_classes=81).eval()
    assert count_parameters(model) == pytest.approx(4.3e6, rel=0.05)
    assert multiply_adds(model, 300) == pytest.approx(0.8e9, rel=0.10)


def test_tf_preset_matches_tf_coco_graph_size():
    # The TF model zoo's 91-class ssdlite_mobilenet_v2_coco: about 4.47M parameters, 0.76B multiply-adds.
    model = build_model("ssdlite300_mobilenet_v2_tf", num_classes=91).eval()
    assert count_parameters(model) == pytest.approx(4.47e6, rel=0.02)
    assert multiply_adds(model, 300) == pytest.approx(0.76e9, rel=0.05)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_outputs_align_with_anchors(name):
    config = PRESETS[name]
    model = build_model(name, num_classes=5).eval()
    size = config.image_size
    boxes, logits = model(torch.rand(2, 3, size, size) * 255)
    assert boxes.shape == (2, model.anchors.shape[0], 4)
    assert logits.shape == (2, model.anchors.shape[0], 5)
    assert torch.isfinite(boxes).all() and torch.isfinite(logits).all()


def test_anchor_counts():
    assert generate_anchors("tf", 300).shape == (1917, 4)  # the TF graph's count
    assert generate_anchors("ssd", 320).shape == (3234, 4)  # torchvision ssdlite320's count
    assert feature_map_sizes(300) == [19, 10, 5, 3, 2, 1]
    assert num_anchors_per_location("tf") == [3, 6, 6, 6, 6, 6]


def test_ssd_anchors_match_torchvision():
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.image_list import ImageList

    from ssdlite.core.boxes import cxcywh_to_xyxy

    generator = DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)
    maps = [torch.zeros(1, 1, s, s) for s in feature_map_sizes(320)]
    theirs = generator(ImageList(torch.zeros(1, 3, 320, 320), [(320, 320)]), maps)[0] / 320
    torch.testing.assert_close(cxcywh_to_xyxy(generate_anchors("ssd", 320)), theirs, atol=1e-6, rtol=0)


def test_tf_anchors_follow_multiple_grid_anchor_generator():
    anchors = generate_anchors("tf", 300)
    # First map (19x19): 3 boxes per location, the first at scale 0.1, centred on the cell.
    torch.testing.assert_close(anchors[0], torch.tensor([0.5 / 19, 0.5 / 19, 0.1, 0.1]))
    first_ratio2 = anchors[1]
    assert first_ratio2[2] / first_ratio2[3] == pytest.approx(2.0, rel=1e-5)
    # Order is map -> y -> x -> box: the 4th anchor is the next x position.
    assert anchors[3, 0] == pytest.approx(1.5 / 19) and anchors[3, 1] == pytest.approx(0.5 / 19)
    # Last map (1x1): interpolated scale sqrt(0.95 * 1.0) at ratio 1, and TF does not clip.
    torch.testing.assert_close(anchors[-1, 2:], torch.tensor([0.95**0.5, 0.95**0.5]))
    assert anchors[:, 2].max() > 1.0


def test_width_multiplier_shrinks_the_model():
    full = count_parameters(build_model(num_classes=21))
    half = count_parameters(build_model(num_classes=21, width_mult=0.5))
    assert half < 0.45 * full


def test_invalid_configs_are_rejected_clearly():
    with pytest.raises(ValueError, match="backbone"):
        get_config("ssdlite320_mobilenet_v2", backbone="resnet50")
    with pytest.raises(ValueError, match="num_classes"):
        build_model(num_classes=1)
    with pytest.raises(ValueError, match="unknown model preset"):
        build_model("yolo")
    with pytest.raises(ValueError, match="unknown SSDLiteConfig fields"):
        SSDLiteConfig.from_dict({"colour": "red"})


def test_config_round_trips_through_a_dict():
    config = get_config("ssdlite300_mobilenet_v2_tf", num_classes=2)
    assert SSDLiteConfig.from_dict(config.to_dict()) == config
