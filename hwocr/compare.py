"""`python -m hwocr.compare SWEEP_DIR`: rebuild a sweep's comparison. The code lives in
hwocr/sweeps/compare.py."""

import sys

from hwocr.sweeps.compare import main

if __name__ == "__main__":
    sys.exit(main())
