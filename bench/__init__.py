"""Side-by-side benchmarks against torchvision's SSDLite (``python -m bench.<name>``)."""
