"""GLM-OCR (zai-org/GLM-OCR) through transformers' native `glm_ocr` classes: its configs built offline
(architecture.py), its processor without the video half (processor.py), its training examples
(inputs.py) and the tiny random checkpoint the tests and the demo run (tiny.py).
hwocr/model/families/glm_ocr.py plugs it into the pipeline."""
