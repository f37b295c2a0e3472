"""hwocr: fine-tune and evaluate DeepSeek-OCR on Vietnamese handwriting."""

__version__ = "0.1.0"
