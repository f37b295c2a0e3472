#!/usr/bin/env bash
# On the GPU machine: tests/official/ocr2_logits.py at full size (3.39 B parameters, random weights,
# saved in bf16 by DeepSeek's model class, compared in each dtype given). Expects the ignored folder
# .official/ (carried, never committed; tests/official/README.md says what goes in it):
#   .official/hub/     the hub repo's files (remote code, config.json, tokenizer files)
#   .official/github/  github deepseek-ai/DeepSeek-OCR-2 (DeepSeek-OCR2-master/...)
#   .official/wheels/  DeepSeek's environment for cp312: transformers 4.46.3, tokenizers 0.20.3,
#                      huggingface_hub 0.26.2, einops, addict, easydict, torchvision 0.26.0
# Usage: bash tests/official/gpu_logits.sh [float32|bfloat16 ...]      (one JSON line per dtype)
# SIZE=reduced DEVICE=cpu WHEELS=DIR run the same steps on a CPU.
set -eu
export PYTHONUNBUFFERED=1 PYTHONPATH=. TQDM_DISABLE=1
SIZE=${SIZE:-full} DEVICE=${DEVICE:-cuda} WHEELS=${WHEELS:-.official/wheels}
SITE=/tmp/ocr2-official-site
if python3 -c "import torchvision" 2>/dev/null; then  # the machine's own matches its torch
  wheels=$(ls "$WHEELS"/*.whl | grep -v torchvision)
else
  wheels=$(ls "$WHEELS"/*.whl)
fi
# shellcheck disable=SC2086
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" $wheels
if [ -d "$SITE/torchvision" ] && ! PYTHONPATH="$SITE" python3 -c "import torchvision.transforms" 2>/dev/null; then
  # built for another torch: its C++ ops do not load, so registering their fake kernels fails at
  # import; the Python transforms DeepSeek's code uses need neither
  echo '# emptied: this torchvision build has no ops for this torch' > "$SITE/torchvision/_meta_registrations.py"
fi
export HWOCR_OCR2_HUB=.official/hub HWOCR_OCR2_OFFICIAL=.official/github HWOCR_OCR2_PYTHONPATH=$SITE
for dtype in "${@:-float32}"; do
  log=/tmp/ocr2-logits-$SIZE-$dtype.log
  if ! python3 tests/official/ocr2_logits.py --size "$SIZE" --device "$DEVICE" --dtype "$dtype" \
      --save-dtype bfloat16 --work "/tmp/ocr2-logits-$SIZE" >"$log" 2>&1; then
    tail -40 "$log"
    exit 1
  fi
  grep '^{' "$log"
done
