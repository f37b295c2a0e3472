"""hwocr: fine-tune and evaluate DeepSeek-OCR on Vietnamese handwriting."""

__version__ = "0.1.0"

import logging

# bitsandbytes warns on import that an optional CPU kernel package is missing; it is irrelevant here.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
