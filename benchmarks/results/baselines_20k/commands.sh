#!/usr/bin/env bash
# The study's dataset and encoders, then one semore-finetune run per line. Run from the folder semore-compare ran in; OUT is the study folder.
OUT="${OUT:-runs/baselines}"
semore-collect --config study --out "$OUT/data" --quiet
semore-annotate --config quickstart --data "$OUT/data" --quiet
semore-pretrain --config quickstart --data "$OUT/data" --out "$OUT/encoders/semore" --quiet
semore-pretrain --config quickstart --data "$OUT/data" --out "$OUT/encoders/atc" --objective atc --quiet
semore-pretrain --config quickstart --data "$OUT/data" --out "$OUT/encoders/no_language" --loss.sem_weight 0.0 --loss.mot_weight 0.0 --loss.state_weight 1.0 --quiet
semore-finetune --config quickstart --encoder "$OUT/encoders/semore/encoder.pt" --out "$OUT/runs/semore_guided/seed0" --seed 0 --num-train-steps 20000 --eval_every_steps 1000 --num_eval_episodes 10 --fabric.precision bf16-mixed --batch_size 128 --update_every 1 --updates_per_step 1 --sac.target_entropy_per_dim -1.0 --encoder_mode guided --encoder_trainable_from projection --encoder_lr 0.0001 --shared-reference "$OUT/reference" --resume --quiet
semore-finetune --config quickstart --encoder "$OUT/encoders/semore/encoder.pt" --out "$OUT/runs/semore_guided/seed1" --seed 1 --num-train-steps 20000 --eval_every_steps 1000 --num_eval_episodes 10 --fabric.precision bf16-mixed --batch_size 128 --update_every 1 --updates_per_step 1 --sac.target_entropy_per_dim -1.0 --encoder_mode guided --encoder_trainable_from projection --encoder_lr 0.0001 --shared-reference "$OUT/reference" --resume --quiet
semore-finetune --config quickstart --encoder none --out "$OUT/runs/drqv2/seed4" --seed 4 --num-train-steps 20000 --eval_every_steps 1000 --num_eval_episodes 10 --fabric.precision bf16-mixed --batch_size 128 --update_every 1 --updates_per_step 1 --sac.target_entropy_per_dim -1.0 --encoder_mode finetune --encoder_trainable_from trunk --encoder_lr 0.0001 --encoder.kind drqv2 --shared-reference "$OUT/reference" --resume --quiet
