"""Real-time SSDLite detection over HTTP and WebSocket: ``python -m service``.

``create_app`` builds the FastAPI app; importing this package loads no model and no torch.
"""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
