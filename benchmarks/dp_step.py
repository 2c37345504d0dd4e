"""DP-SGD step time / non-private step time, measured side by side in one process.

    .venv/bin/python benchmarks/dp_step.py [--steps 30] [--batch 32] [--threads 2]

For each model variant it times the same number of optimizer steps on the same batches:
plain SGD, then Opacus DP-SGD (hooks mode, per-sample clipping + noise). It prints the
median step times and their ratio. Inputs are random tensors of the real shapes (the
ratio does not depend on the values).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from common.models.config import FusionConfig, ImageEncoderConfig, TabularEncoderConfig, TextEncoderConfig
from common.models.model import FusionModel

VARIANTS = {
    # name: (modalities, text kind, image kind)
    "tabular+text(frozen MiniLM emb.)": (("tabular", "text"), "minilm-frozen", None),
    "tabular+text(tiny-bert)": (("tabular", "text"), "tiny-bert", None),
    "tabular+image(small-cnn)": (("tabular", "image"), None, "small-cnn"),
    "tabular+image(resnet18-gn)": (("tabular", "image"), None, "resnet18-gn"),
}


def _model(mods, text, image, fusion: str) -> FusionModel:
    torch.manual_seed(0)
    return FusionModel(FusionConfig(
        modalities=mods, fusion=fusion, tabular=TabularEncoderConfig(in_features=7),
        text=TextEncoderConfig(kind=text) if text else None,
        image=ImageEncoderConfig(kind=image) if image else None))


def _batch(mods, text, b: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    x = {"tabular": torch.randn(b, 7), "tabular_mask": torch.ones(b, 7)}
    if "text" in mods:
        if text == "minilm-frozen":
            x["text"] = torch.randn(b, 384)
        else:
            x["text"] = torch.randint(1000, 2000, (b, 64))
            x["text_attention_mask"] = torch.ones(b, 64, dtype=torch.long)
    if "image" in mods:
        x["image"] = torch.rand(b, 1, 28, 28)
    return x, torch.ones(b, len(mods)), torch.randint(0, 2, (b,))


def _time_steps(model: nn.Module, opt, batch, steps: int) -> list[float]:
    x, mask, y = batch
    out = []
    for i in range(steps + 3):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x, mask), y).backward()
        opt.step()
        if i >= 3:  # warm-up steps are not counted
            out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fusion", default="attention")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    print(f"batch {args.batch}, {args.steps} timed steps, {args.threads} threads, fusion={args.fusion}, "
          f"torch {torch.__version__}, device cpu")
    print(f"{'model':36s} {'params':>10s} {'plain ms':>9s} {'DP ms':>9s} {'DP/plain':>9s}")
    for name, (mods, text, image) in VARIANTS.items():
        batch = _batch(mods, text, args.batch)
        plain = _model(mods, text, image, args.fusion)
        n = sum(p.numel() for p in plain.parameters() if p.requires_grad)
        t_plain = _time_steps(plain, torch.optim.SGD(plain.parameters(), lr=0.01), batch, args.steps)
        dp = GradSampleModule(_model(mods, text, image, args.fusion))
        opt = DPOptimizer(torch.optim.SGD(dp.parameters(), lr=0.01), noise_multiplier=1.0, max_grad_norm=1.0,
                          expected_batch_size=args.batch)
        t_dp = _time_steps(dp, opt, batch, args.steps)
        mp, md = statistics.median(t_plain) * 1e3, statistics.median(t_dp) * 1e3
        print(f"{name:36s} {n:>10,d} {mp:>9.2f} {md:>9.2f} {md / mp:>9.2f}")


if __name__ == "__main__":
    main()
