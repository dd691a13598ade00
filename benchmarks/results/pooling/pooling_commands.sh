# max_tokens 64: the existing export runs/regimes_10k/encoders/semore/encoder.pt
semore-probe --encoder runs/regimes_10k/encoders/semore/encoder.pt --data runs/regimes_10k/data --out runs/pooling/probe/tokens64.json --quiet
semore-pretrain --config quickstart --data runs/regimes_10k/data --out runs/pooling/tokens144 --encoder.max_tokens 144 --quiet
semore-probe --encoder runs/pooling/tokens144/encoder.pt --data runs/regimes_10k/data --out runs/pooling/probe/tokens144.json --quiet
