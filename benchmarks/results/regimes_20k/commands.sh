#!/usr/bin/env bash
# The study's dataset and encoders, then one semore-finetune run per line (paths relative to where semore-compare ran).
semore-collect --config study --out runs/regimes_10k/data
semore-annotate --config quickstart --data runs/regimes_10k/data
semore-pretrain --config quickstart --data runs/regimes_10k/data --out runs/regimes_10k/encoders/semore --quiet
semore-finetune --config quickstart --encoder runs/regimes_10k/encoders/semore/encoder.pt --out runs/regimes_10k/runs/semore_frozen/seed0 --seed 0 --num-train-steps 20000 --eval_every_steps 1000 --num_eval_episodes 10 --eval_seed 0 --fabric.precision bf16-mixed --encoder_mode frozen --batch_size 128 --update_every 1 --updates_per_step 2 --resume --quiet
semore-finetune --config quickstart --encoder runs/regimes_10k/encoders/semore/encoder.pt --out runs/regimes_10k/runs/semore_frozen/seed1 --seed 1 --num-train-steps 20000 --eval_every_steps 1000 --num_eval_episodes 10 --eval_seed 0 --fabric.precision bf16-mixed --encoder_mode frozen --batch_size 128 --update_every 1 --updates_per_step 2 --resume --quiet
semore-finetune --config quickstart --encoder runs/regimes_10k/encoders/semore/encoder.pt --out runs/regimes_10k/runs/semore_frozen/seed2 --seed 2 --num-train-steps 20000 --eval_every_steps 1000 --num_eval_episodes 10 --eval_seed 0 --fabric.precision bf16-mixed --encoder_mode frozen --batch_size 128 --update_every 1 --updates_per_step 2 --resume --quiet
