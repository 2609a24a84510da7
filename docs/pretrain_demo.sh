#!/usr/bin/env bash
# Pretrain a small RoBERTa from scratch on the embedded IMDB text, then finetune it on IMDB
# classification, next to the same architecture finetuned from random initialisation. Offline;
# 30 min on 2 CPU cores (2026-12-06, AMD EPYC). Measured: masked-LM test loss 3.94 after phase 1
# (masked-token accuracy 32.9%; a unigram model scores ~7.0; docs/pretrain_curves.png), 3.79 and
# 34.4% after phase 2; IMDB test accuracy 0.672 pretrained vs 0.701 random init at this script's
# finetuning rate (2e-4); with each arm at its best rate of 2e-4, 5e-4, 1e-3 and 2e-3 (by
# validation loss: 5e-4 for both) 0.714 vs 0.735. So pretraining does not pay off yet at this
# size (issue 8 stays open); the sweep and the runs that led here: docs/pretraining_experiments.md.
#
# Pretraining runs in two phases, as BERT's recipe does (short sequences first): at 32 tokens a
# block the masked-LM loss leaves its plateau (unigram-like predictions, context unused) after
# ~6 M tokens; at 128 tokens from the start it had not after 16 M. The second phase trains the
# positions 32-127 that finetuning at 128 tokens needs.
# The corpus is `--dataset imdb`'s training split: its validation and test reviews, which the
# classifiers below are scored on, are held out of pretraining as well.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-results/pretrain-demo}
SHAPE=num_hidden_layers=2,hidden_size=128,num_attention_heads=2,intermediate_size=512,vocab_size=8192,max_position_embeddings=130
MLM=(--task mlm --dataset imdb --dropout 0 --lr-schedule cosine)
export HF_HUB_OFFLINE=1

# 1. Masked-LM from scratch (a byte-level BPE tokenizer trained on the corpus first), 32-token
#    blocks: 24 M tokens, 128 blocks a step.
$PY train.py --model roberta-base --from-scratch --model-config "$SHAPE" "${MLM[@]}" \
  --max-length 32 --batch-size 128 --max-tokens 24000000 --learning-rate 2e-3 --warmup-steps 500 \
  --eval-every 1000 --out "$OUT/pretrain-32"

# 2. Go on at 128-token blocks: 12 M tokens, 32 blocks a step.
$PY train.py --model "$OUT/pretrain-32/best" "${MLM[@]}" \
  --max-length 128 --batch-size 32 --max-tokens 12000000 --learning-rate 1e-3 --warmup-steps 200 \
  --eval-every 500 --out "$OUT/pretrain-128"

# 3. Finetune the pretrained encoder (a new classification head) and 4. the same architecture from
#    random initialisation (the pretraining run's tokenizer), with the same data, budget and dropout.
FT=(--dataset imdb --max-samples 2000 --max-length 128 --epochs 3 --batch-size 16 --learning-rate 2e-4 --dropout 0.1 --seed 0)
$PY train.py --model "$OUT/pretrain-128/best" --out "$OUT/finetune-pretrained" "${FT[@]}"
$PY train.py --model roberta-base --from-scratch --model-config "$SHAPE" --tokenizer "$OUT/pretrain-32/init" \
  --out "$OUT/finetune-random-init" "${FT[@]}"
