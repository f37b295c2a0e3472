"""`python -m hwocr.sync RUN_DIR`: the command a run prints when MLflow missed part of it.
The code lives in hwocr/tracking/sync.py."""

import sys

from hwocr.tracking.sync import main

if __name__ == "__main__":
    sys.exit(main())
