"""``python -m train`` is ``python -m train.coco``."""

import sys

from .coco import main

sys.exit(main())
