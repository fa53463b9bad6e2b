"""python -m comhe_kernels.bench: the same as the comhe-bench command."""

import sys

from comhe_kernels.bench import main

if __name__ == "__main__":  # not in the worker processes, which import this module as __mp_main__
    sys.exit(main())
