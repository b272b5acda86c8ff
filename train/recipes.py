"""Training recipes: the defaults that depend on the data.

The embedded generated dataset gets a small, fast model and a short schedule that finish in
minutes on a 2-core CPU, from scratch and offline. Real data (COCO layout, COCO json or YOLO
``data.yaml``) gets the SSDLite320 recipe of the paper and torchvision's reference: an ImageNet
backbone, SGD with Nesterov momentum, 600 epochs with a cosine schedule, SSD augmentation.
Fine-tuning a trained detector (``--init``) gets its own short recipe on any data: the weights
already detect, so a lower rate, one warm-up epoch and tens of epochs, not hundreds. Every field
can be overridden on the command line.
"""

from dataclasses import dataclass

# ``base_lr`` is the peak learning rate for a global batch of this many images; the actual rate
# scales linearly with the global batch unless --lr is given.
BATCH_FOR_BASE_LR = 256


@dataclass(frozen=True)
class Recipe:
    model: str
    image_size: int | None  # None: the preset's
    width_mult: float | None
    min_scale: float | None
    backbone_weights: str  # "imagenet" or "none"
    epochs: int
    batch_size: int  # per process
    optimizer: str  # "sgd" or "adamw"
    base_lr: float
    weight_decay: float
    warmup_epochs: float
    augment: str
    ema_decay: float
    eval_every: int

    def lr_for(self, global_batch: int) -> float:
        return self.base_lr * global_batch / BATCH_FOR_BASE_LR


RECIPES = {
    "embedded": Recipe(
        model="ssdlite320_mobilenet_v2",
        image_size=160,
        width_mult=0.5,
        min_scale=None,
        backbone_weights="none",
        epochs=11,
        batch_size=32,
        optimizer="adamw",
        base_lr=0.032,
        weight_decay=0.05,
        warmup_epochs=2,
        augment="light",
        ema_decay=0.999,
        eval_every=2,
    ),
    # torchvision's SSDLite reference: 8 GPUs x 24 images, lr 0.15 (0.2 per 256 images), weight
    # decay 4e-5, 600 epochs, cosine; plus Nesterov and the EMA of the weights.
    "coco": Recipe(
        model="ssdlite320_mobilenet_v2",
        image_size=None,
        width_mult=None,
        min_scale=None,
        backbone_weights="imagenet",
        epochs=600,
        batch_size=32,
        optimizer="sgd",
        base_lr=0.2,
        weight_decay=4e-5,
        warmup_epochs=5,
        augment="ssd",
        ema_decay=0.9998,
        eval_every=1,
    ),
    # --init: a detector that already works, adapted to a few hundred images (docs/training.md).
    "finetune": Recipe(
        model="ssdlite320_mobilenet_v2",  # unused: the architecture comes from the checkpoint
        image_size=None,
        width_mult=None,
        min_scale=None,
        backbone_weights="none",
        epochs=10,
        batch_size=16,
        optimizer="sgd",
        base_lr=0.008,
        weight_decay=4e-5,
        warmup_epochs=1,
        augment="ssd",
        ema_decay=0.9998,
        eval_every=1,
    ),
}
