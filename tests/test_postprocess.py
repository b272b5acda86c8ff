import torch
from torchvision.ops import nms

from ssdlite.core import PostprocessConfig
from ssdlite.core.anchors import generate_anchors
from ssdlite.core.boxes import decode_boxes
from ssdlite.core.postprocess import class_scores, postprocess

WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def reference_postprocess(box_regression, class_logits, anchors, score_function, threshold, iou, max_det, topk):
    """Straightforward per-image, per-class version of the same rules."""
    results = []
    for deltas, logits in zip(box_regression, class_logits, strict=False):
        scores = class_scores(logits[None], score_function)[0]
        boxes = decode_boxes(deltas, anchors, WEIGHTS)
        flat = scores.flatten()
        top_scores, top_index = flat.topk(min(topk, flat.numel()))
        candidates = [(s, i) for s, i in zip(top_scores.tolist(), top_index.tolist(), strict=False) if s > threshold]
        kept = []
        num_classes = scores.shape[1]
        for c in range(num_classes):
            of_class = [(s, i // num_classes) for s, i in candidates if i % num_classes == c]
            if not of_class:
                continue
            s = torch.tensor([x[0] for x in of_class])
            b = boxes[[x[1] for x in of_class]]
            for k in nms(b, s, iou).tolist():
                kept.append((s[k].item(), c + 1, b[k]))
        kept.sort(key=lambda x: -x[0])
        kept = kept[:max_det]
        results.append(kept)
    return results


def test_matches_per_image_per_class_reference():
    torch.manual_seed(0)
    anchors = generate_anchors("ssd", 96)
    box_regression = torch.randn(3, anchors.shape[0], 4) * 0.5
    class_logits = torch.randn(3, anchors.shape[0], 4) * 3
    class_logits[1] -= 100  # an image with nothing above threshold except background
    class_logits[1, :, 0] += 200
    for score_function in ("softmax", "sigmoid"):
        settings = PostprocessConfig(
            score_function, score_threshold=0.2, nms_iou=0.45, max_detections=15, candidates_per_image=200
        )
        ours = postprocess(box_regression, class_logits, anchors, settings)
        ref = reference_postprocess(box_regression, class_logits, anchors, score_function, 0.2, 0.45, 15, 200)
        assert len(ours) == 3
        assert len(ours[1].scores) == 0
        for got, expected in zip(ours, ref, strict=False):
            assert len(got.scores) == len(expected)
            torch.testing.assert_close(got.scores, torch.tensor([e[0] for e in expected]))
            assert got.labels.tolist() == [e[1] for e in expected]
            if expected:
                torch.testing.assert_close(got.boxes, torch.stack([e[2] for e in expected]).clamp(0, 1))


def test_decodes_a_known_box_and_clips_after_nms():
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.95, 0.5, 0.2, 0.2]])
    box_regression = torch.zeros(1, 2, 4)
    class_logits = torch.tensor([[[0.0, 5.0], [0.0, 4.0]]])
    (det,) = postprocess(box_regression, class_logits, anchors, PostprocessConfig("sigmoid", score_threshold=0.5))
    torch.testing.assert_close(det.boxes, torch.tensor([[0.4, 0.4, 0.6, 0.6], [0.85, 0.4, 1.0, 0.6]]))
    assert det.labels.tolist() == [1, 1]


def test_max_detections_is_per_image():
    torch.manual_seed(1)
    anchors = generate_anchors("ssd", 64)
    logits = torch.randn(2, anchors.shape[0], 3) * 4
    out = postprocess(
        torch.randn(2, anchors.shape[0], 4), logits, anchors, PostprocessConfig(score_threshold=0.0, max_detections=7)
    )
    assert [len(d.scores) for d in out] == [7, 7]
    for d in out:
        assert torch.all(d.scores[:-1] >= d.scores[1:])
