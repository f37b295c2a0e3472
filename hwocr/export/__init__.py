"""`python -m hwocr.export run=RUN_DIR output=DIR`: a tuned run as a model that runs without hwocr.

DIR gets the LoRA merged into the base model's weights (a transformers checkpoint with its
processor), the adapter as trained in adapter/ (for PEFT), a model card (README.md, in both) and
export.json (what was exported from where). docs/export.md has the details.
"""

from hwocr.export.command import export
from hwocr.export.config import ExportConfig, register_schema

__all__ = ["ExportConfig", "export", "register_schema"]
