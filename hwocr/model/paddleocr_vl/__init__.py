"""PaddleOCR-VL (PaddlePaddle/PaddleOCR-VL) through transformers' native `paddleocr_vl` classes: the
tiny random checkpoint the tests and the demo run, and the full-size one the benchmarks measure
(tiny.py). hwocr/model/families/paddleocr_vl.py plugs it into the pipeline."""
