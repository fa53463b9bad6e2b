"""``python -m comhe_kernels.thomson``: the same as ``comhe-thomson``."""

import sys

from .cli import main

sys.exit(main())
