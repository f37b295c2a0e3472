"""The fast evaluation path: the same tokens as the reference path (evaluate/reference.py), sooner.

- encoding.py: threads encode the next batch beside the GPU, in slices joined into what one
  processor call gives; on CUDA into page-locked memory, so the copy to the GPU is asynchronous.
- vision.py: the frozen vision tower's layers compiled (CUDA), SAM's patch embedding as a matmul.
- decoding.py: greedy decoding with each step replayed as a CUDA graph (bf16 on GPUs of compute
  capability 8.0+; elsewhere its steps run eagerly), and the experts' grouped_mm kept for decoding.

GenerationSettings (evaluate/generate.py) switches each part; tests/test_evaluation_paths.py holds
the two paths token-identical on the parts that run on a CPU.
"""
