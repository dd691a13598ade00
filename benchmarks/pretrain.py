"""Pretraining throughput: data loader vs training-step consumption, and training steps/s.

    python benchmarks/pretrain.py [--data DIR] [--config quickstart]
        [--precision 32-true|bf16-mixed] [--accelerator cpu|gpu] [--batches 20]
        [--compare-precision] [--section.field VALUE ...]

Three numbers, in one process:

1. loader samples/s: the training DataLoader iterated alone (after its start-up, which
   includes filling the shuffle buffer);
2. consumption samples/s: forward + backward + optimiser step on batches already in
   memory (on the training device), i.e. how fast training could go with a free loader;
3. training steps/s: ``Trainer.fit`` end to end (loader and step together).

The loader should be at least 3x faster than consumption, so training is compute-bound.
``--compare-precision`` times consumption in float32 and in bf16-mixed instead, one step of
each in turn on the same batches (so a busy machine slows both alike), and prints the ratio.
Without ``--data`` a small real dataset is made in a temporary folder first: 8 episodes of
the quickstart collect preset, annotated with the quickstart annotate preset (scene captions,
384-d MiniLM embeddings), through the stages' own commands.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import load_config  # noqa: E402
from pipeline.pretrain.config import PretrainConfig  # noqa: E402
from pipeline.pretrain.datamodule import SemoreDataModule  # noqa: E402
from pipeline.pretrain.run import build_module, build_trainer  # noqa: E402


def device_description(accelerator: str) -> str:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return f"GPU {torch.cuda.get_device_name(0)}"
    threads = torch.get_num_threads()
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {threads}"


def quickstart_dataset(root: Path) -> Path:
    """8 quickstart episodes, collected and annotated by the stages' own ``main``."""
    from pipeline.annotate.run import main as annotate_main
    from pipeline.collect.run import main as collect_main

    if collect_main(["--config", "quickstart", "--out", str(root), "--episodes", "8", "--quiet"]):
        raise SystemExit("collect failed")
    if annotate_main(["--config", "quickstart", "--data", str(root), "--quiet"]):
        raise SystemExit("annotate failed")
    return root


def loader_rate(dm: SemoreDataModule, num_batches: int, warmup: int = 2) -> float:
    """Samples/s of the training loader alone, after ``warmup`` batches."""
    loader = dm.train_dataloader()
    seen, start, samples = 0, None, 0
    while seen < warmup + num_batches:
        for batch in loader:
            seen += 1
            if seen == warmup:
                start = time.perf_counter()
            elif seen > warmup:
                samples += batch["obs"].shape[0]
            if seen >= warmup + num_batches:
                break
    return samples / (time.perf_counter() - start)


def consumption_rate(
    module, batches: list[dict], device: torch.device, precision: str, num_steps: int
) -> float:
    """Samples/s of forward + backward + optimiser step on preloaded batches."""
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    step = _stepper(module, device, precision)
    for batch in batches[:2]:  # warm-up (allocator, kernels)
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(num_steps):
        step(batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return num_steps * batches[0]["obs"].shape[0] / (time.perf_counter() - start)


def precision_ratio(cfg: PretrainConfig, dm: SemoreDataModule, batches: list[dict], steps: int):
    """Median seconds per consumption step in 32-true and bf16-mixed, timed in turn."""
    device = torch.device("cpu")
    precisions = ("32-true", "bf16-mixed")
    steppers = {p: _stepper(build_module(cfg, dm), device, p) for p in precisions}
    times: dict[str, list[float]] = {p: [] for p in precisions}
    for i in range(steps + 2):
        for precision, step in steppers.items():
            start = time.perf_counter()
            step(batches[i % len(batches)])
            if i >= 2:  # the first two warm up allocator and kernels
                times[precision].append(time.perf_counter() - start)
    return {p: sorted(t)[len(t) // 2] for p, t in times.items()}


def _stepper(module, device: torch.device, precision: str):
    """One forward + backward + optimiser step of ``module`` as the Trainer runs it."""
    module = module.to(device).train()
    module.on_fit_start()  # the memory layout training uses
    optimizer = module.configure_optimizers()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled="bf16" in precision)

    def step(batch: dict) -> None:
        with autocast:
            outputs = module.model(module.augment(batch["obs"]), batch["action"])
            loss = module.loss(outputs, batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def training_rate(cfg: PretrainConfig, dm: SemoreDataModule, out: Path, warmup: int) -> float:
    """Steps/s of Trainer.fit, timed from step ``warmup`` to the end."""
    from lightning.pytorch.callbacks import Callback

    times: dict[str, float] = {}

    class Timer(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == warmup:
                times["start"] = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize()
            times["end"] = time.perf_counter()

    trainer = build_trainer(cfg, out, quiet=True)
    trainer.callbacks.append(Timer())
    trainer.fit(build_module(cfg, dm), datamodule=dm)
    return (cfg.trainer.max_steps - warmup) / (times["end"] - times["start"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="dataset folder (default: synthetic)")
    parser.add_argument("--config", default="quickstart", help="pretrain preset or YAML")
    parser.add_argument("--precision", default=None, help="e.g. bf16-mixed on a GPU")
    parser.add_argument("--accelerator", default=None, help="cpu, gpu or auto")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measure")
    parser.add_argument(
        "--compare-precision",
        action="store_true",
        help="time CPU steps in 32-true against bf16-mixed, in turn, and print the ratio",
    )
    args, overrides = parser.parse_known_args()
    cfg = load_config(PretrainConfig, args.config, overrides, stage="pretrain")
    if args.precision:
        cfg.trainer.precision = args.precision
    if args.accelerator:
        cfg.trainer.accelerator = args.accelerator
    warmup = 5
    cfg.trainer.max_steps = warmup + args.batches
    cfg.trainer.val_check_interval = cfg.trainer.max_steps + 1  # time training only
    cfg.trainer.checkpoint_every_n_steps = cfg.trainer.max_steps + 1

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or quickstart_dataset(Path(tmp) / "data")
        dm = SemoreDataModule(data, cfg.data, seed=cfg.seed)
        _ = dm.stats
        use_cuda = cfg.trainer.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        device = torch.device("cuda" if use_cuda else "cpu")
        print(f"device: {device_description(cfg.trainer.accelerator)}")
        print(
            f"data: {data} ({dm.stats.num_train_samples} training samples, "
            f"{dm.info.image_height}x{dm.info.image_width}, frame stack {cfg.data.frame_stack})"
        )
        print(
            f"batch {cfg.data.batch_size}, loader workers {cfg.data.num_workers}, "
            f"precision {cfg.trainer.precision}, encoder {cfg.encoder}"
        )

        batches = [b for b, _ in zip(dm.train_dataloader(), range(8), strict=False)]
        if args.compare_precision:
            median_s = precision_ratio(cfg, dm, batches, args.batches)
            for precision, seconds in median_s.items():
                print(f"{precision:>10}: {seconds * 1000:7.1f} ms per step (median, preloaded)")
            ratio = median_s["bf16-mixed"] / median_s["32-true"]
            print(f"bf16-mixed / 32-true: {ratio:.2f}x the time per step")
            return
        loader = loader_rate(dm, args.batches)
        consume = consumption_rate(
            build_module(cfg, dm), batches, device, cfg.trainer.precision, args.batches
        )
        print(f"loader:      {loader:8.1f} samples/s")
        print(f"consumption: {consume:8.1f} samples/s (forward + backward + step, preloaded)")
        print(f"ratio loader/consumption: {loader / consume:.1f}x (target >= 3x)")
        steps = training_rate(cfg, dm, Path(tmp) / "run", warmup)
        print(
            f"training:    {steps:8.2f} steps/s = {steps * cfg.data.batch_size:.1f} samples/s "
            f"(Trainer.fit, loader included)"
        )


if __name__ == "__main__":
    main()
