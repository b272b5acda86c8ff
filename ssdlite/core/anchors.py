"""Default boxes ("anchors"), normalised (cx, cy, w, h), ordered feature map -> y -> x -> box.

Two styles:
- ``"ssd"``: torchvision's ``DefaultBoxGenerator`` (SSD paper): per location the scale s_k and
  sqrt(s_k * s_k+1) at ratio 1, then each ratio r and 1/r of ``aspect_ratios`` (default 2 and 3,
  so 2 + 2 * len(aspect_ratios) boxes); clipped to [0, 1].
- ``"tf"``: the TF Object Detection API's ``MultipleGridAnchorGenerator`` as configured for
  SSDLite: ratios 1, 2, 0.5, 3, 0.3333 plus one interpolated scale at ratio 1, three boxes on the
  first map ((0.1, 1), (s, 2), (s, 0.5)) and no clipping. Its ratios are fixed.
"""

import math

import torch
from torch import Tensor

ANCHOR_STYLES = ("ssd", "tf")
TF_ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 0.3333)  # TF's configs write 0.3333, not 1/3
DEFAULT_ASPECT_RATIOS = (2.0, 3.0)  # the "ssd" style's r (each gives r and 1/r)


def feature_map_sizes(image_size: int, num_maps: int = 6) -> list[int]:
    """Spatial sizes of SSDLite's maps: strides 16 and 32, then four stride-2 extra layers."""
    size, sizes = image_size, []
    for stride_log2 in range(1, 4 + num_maps):
        size = math.ceil(size / 2)
        if stride_log2 >= 4:
            sizes.append(size)
    return sizes


def scales(num_maps: int, min_scale: float, max_scale: float) -> list[float]:
    """Linearly spaced scales, one per map, plus 1.0 for the last map's interpolated box."""
    step = (max_scale - min_scale) / (num_maps - 1)
    return [min_scale + step * k for k in range(num_maps)] + [1.0]


def box_shapes(
    style: str,
    num_maps: int,
    min_scale: float,
    max_scale: float,
    aspect_ratios: tuple[float, ...] = DEFAULT_ASPECT_RATIOS,
) -> list[list[tuple[float, float]]]:
    """Per map, the (w, h) of the boxes placed at every location, in order."""
    if style not in ANCHOR_STYLES:
        raise ValueError(f"anchor style must be one of {ANCHOR_STYLES}, got {style!r}")
    if style == "tf" and tuple(aspect_ratios) != DEFAULT_ASPECT_RATIOS:
        raise ValueError(f"the 'tf' anchor style has fixed aspect ratios; aspect_ratios={aspect_ratios} needs 'ssd'")
    s = scales(num_maps, min_scale, max_scale)
    shapes = []
    for k in range(num_maps):
        interpolated = math.sqrt(s[k] * s[k + 1])
        if style == "ssd":
            boxes = [(s[k], s[k]), (interpolated, interpolated)]
            for ratio in aspect_ratios:
                r = math.sqrt(ratio)
                boxes += [(s[k] * r, s[k] / r), (s[k] / r, s[k] * r)]
        elif k == 0:
            boxes = [
                (0.1, 0.1),
                (s[0] * math.sqrt(2.0), s[0] / math.sqrt(2.0)),
                (s[0] * math.sqrt(0.5), s[0] / math.sqrt(0.5)),
            ]
        else:
            boxes = [(s[k] * math.sqrt(r), s[k] / math.sqrt(r)) for r in TF_ASPECT_RATIOS]
            boxes.append((interpolated, interpolated))
        shapes.append(boxes)
    return shapes


def num_anchors_per_location(
    style: str, num_maps: int = 6, aspect_ratios: tuple[float, ...] = DEFAULT_ASPECT_RATIOS
) -> list[int]:
    return [len(b) for b in box_shapes(style, num_maps, 0.2, 0.95, aspect_ratios)]


def generate_anchors(
    style: str,
    image_size: int,
    min_scale: float = 0.2,
    max_scale: float = 0.95,
    num_maps: int = 6,
    aspect_ratios: tuple[float, ...] = DEFAULT_ASPECT_RATIOS,
) -> Tensor:
    """All anchors for a square ``image_size`` input.

    Args:
        style: ``"ssd"`` or ``"tf"``.
        image_size: input side length in pixels.
        min_scale: scale of the first map's boxes.
        max_scale: scale of the last map's boxes.
        num_maps: number of feature maps.
        aspect_ratios: the ``"ssd"`` style's ratios r, each placing an r and a 1/r box.

    Returns:
        ``[A, 4]`` float32 anchors (cx, cy, w, h), normalised to the image.
    """
    all_anchors = []
    for size, shapes in zip(
        feature_map_sizes(image_size, num_maps),
        box_shapes(style, num_maps, min_scale, max_scale, aspect_ratios),
        strict=False,
    ):
        centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        wh = torch.tensor(shapes, dtype=torch.float64)
        grid = torch.stack((cx, cy), dim=-1).reshape(-1, 1, 2).expand(-1, len(shapes), 2)
        anchors = torch.cat((grid, wh.expand(size * size, -1, -1)), dim=-1).reshape(-1, 4)
        all_anchors.append(anchors)
    anchors = torch.cat(all_anchors)
    if style == "ssd":
        anchors = anchors.clamp(0, 1)
    return anchors.float()


def anchors_for(config) -> Tensor:
    """The anchors of a model config (an ``SSDLiteConfig``): its style, input size, scales and ratios."""
    return generate_anchors(
        config.anchor_style,
        config.image_size,
        config.min_scale,
        config.max_scale,
        aspect_ratios=config.aspect_ratios,
    )
