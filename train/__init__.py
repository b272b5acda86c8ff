"""Training and evaluation of SSDLite on COCO-format data (``python -m train.coco``)."""
