#!/usr/bin/env bash
# On a GPU machine: does the training a Kaggle user runs learn from images? The full-size
# DeepSeek-OCR-2 architecture with random weights (its vision features made to carry the image,
# hwocr/model/live_vision.py), the T4 profile (fp16, 4-bit NF4 with the routed experts, crop mode,
# expert LoRA, gradient checkpointing), through `python -m hwocr.run`, on 8 distinct word images that
# are train and test set at once: with the images, and with every pixel zeroed (the control).
# Wheels the GPU image lacks (bitsandbytes, hydra-core, mlflow-skinny, ...) travel in .whl/, as for
# benchmarks/gpu_suite.sh. `seeing` and `cut` may run at once (each its own MLflow store), and so may
# the same pair with another VISION (lora.vision: frozen, the presets' default, or encoder).
#   bash experiments/full_size_learning.sh spread seeing     (then: cut, vision_cost)
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HWOCR_CACHE=/tmp/hwocr-cache
if ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c "import bitsandbytes, hydra, mlflow" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=.:tests:/tmp/site
RES=${OUT:-/tmp/hwocr-learning}
# 800x320 words: each fills enough of the 1024 px view for the random tower's features to tell the
# images apart (experiments/full_size_learning.md), and is wide enough for crop mode's crops.
WORD_SIZE=${WORD_SIZE:-800x320}
FULL=/tmp/hwocr-full WORDS=/tmp/hwocr-words-$WORD_SIZE STEPS=${STEPS:-150} LR=${LR:-5e-4} VISION=${VISION:-frozen}
mkdir -p "$RES"
python3 -c "from pathlib import Path; from benchmarks.bench import build_full_checkpoint as b; b(Path('$FULL'))" || exit 1
[ -d $WORDS ] || python3 tests/learning.py write-words $WORDS ${WORD_SIZE%x*} ${WORD_SIZE#*x}
overfit="+experiment=lines hardware=t4 model.source=$FULL dataset.root=$WORDS dataset.val_fraction=0 stages=[train,tuned_eval]
  hardware.per_device_batch=8 hardware.grad_accum=1 train.max_steps=$STEPS train.lr=$LR train.save_steps=100000
  train.logging_steps=10 lora.vision=$VISION"
tag() { [ "$VISION" = frozen ] && echo "$1" || echo "$1_$VISION"; }
keep() { cp "$1/eval/tuned/metrics.json" "$RES/$2_tuned_metrics.json"; cp "$1/eval/tuned/predictions.csv" "$RES/$2_tuned_predictions.csv"
         cp "$1/train_summary.json" "$RES/$2_train_summary.json"; grep -E "CER|loss|trainable" "$1/run.log" | cut -c1-300 > "$RES/$2.log"
         grep -h "'loss'" "/tmp/$2.log" > "$RES/$2_losses.log"; }  # the Trainer's logged losses
for phase in "$@"; do case $phase in
  spread)  # the relative spread of the global view's features over the 8 images, at each stage (bf16)
    python3 tests/learning.py spread $FULL $WORDS | tee "$RES/spread.json" ;;
  seeing|cut)
    t=$(tag $phase); control=$([ $phase = cut ] && echo cut-images)
    python3 tests/learning.py $control $overfit tracking.uri=sqlite:///$RES/mlflow-$t.db hydra.run.dir=/tmp/run-$t >/tmp/$t.log 2>&1; tail -12 /tmp/$t.log
    keep /tmp/run-$t $t ;;
  vision_cost)  # training speed and peak memory at the T4 profile on synthetic lines, per lora.vision
    for vision in frozen encoder; do
      python3 -m hwocr.run +experiment=lines hardware=t4 model.source=$FULL dataset=synth_line stages=[train] \
        train.max_steps=${COST_STEPS:-12} train.save_steps=100000 lora.vision=$vision tracking.uri=sqlite:///$RES/mlflow.db \
        hydra.run.dir=/tmp/run-cost-$vision >/tmp/cost-$vision.log 2>&1 || tail -20 /tmp/cost-$vision.log
      cp /tmp/run-cost-$vision/train_summary.json "$RES/vision_cost_$vision.json"; cat "$RES/vision_cost_$vision.json"
    done ;;
esac; done
