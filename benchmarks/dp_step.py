"""DP-SGD step time and memory per Opacus grad-sample mode, against the non-private step, in one process.

    .venv/bin/python benchmarks/dp_step.py [--steps 30] [--batch 32] [--threads 2] [--device cpu]

For each model variant it times the same number of optimizer steps on the same batch: plain SGD, then Opacus
DP-SGD (per-sample clipping + noise) built by ``PrivacyEngine.make_private`` in each grad-sample mode:

* ``hooks``: per-layer hooks with Opacus' hand-written per-sample-gradient rules (Opacus' default);
* ``functorch``: the same hooks, every layer's per-sample gradient by ``torch.func`` (vmap over the layer);
* ``ghost``: fast gradient clipping: per-sample gradient *norms* without per-sample gradients (ghost norms for
  Linear/Embedding/..., other layers fall back to per-sample gradients), then a second backward pass of the
  clipping-weighted loss;
* ``ew``: PyTorch's ExpandedWeights;
* ``fused`` (ours, ``common/models/fused_dp.py``; Linear, LayerNorm and Embedding layers only, others print
  "unsupported"): one forward, one backward to the layers' outputs, exact per-sample norms and clipped sums, then Opacus'
  ghost-clipping optimizer for noise, scaling and accounting;
* ``ghost-opacus``: ``ghost`` with Opacus' own optimizer class (``ghost`` uses ours,
  ``common/models/dp_optimizers.py``: the same bits without a ``deepcopy`` per tensor per step), side by side;
* ``vmap-model`` (benchmark only, not an Opacus mode, not used in training): the whole model's per-sample gradients
  from one ``torch.func.vmap(grad(loss))``, flat clipping, noise and SGD written out; printed only after its
  clipped sum matched Opacus' on the same batch. It shows what a whole-model vmap would cost.

Median step time (after 3 warm-up steps) and the peak resident memory the steps add (Linux: VmHWM after a
reset through /proc/self/clear_refs, minus the RSS before them, with buffers of 64 KiB and more mmapped and
freed memory trimmed first, so that reused heap pages do not hide a peak; CUDA: ``max_memory_allocated``). The mode that
``common/models/grad_sample.py`` chooses for the model is marked ``*``. Inputs are random tensors of the real
shapes (the ratios do not depend on the values).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import gc
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from common.config.settings import app_defaults
from common.models.config import FusionConfig, ImageEncoderConfig, TabularEncoderConfig, TextEncoderConfig
from common.models.grad_sample import GRAD_SAMPLE_MODES, grad_sample_mode
from common.models.model import FusionModel

VARIANTS = {
    # name: (modalities, text kind, image kind); text-projection is the run setting's default (pyproject.toml)
    "default: tabular+text (frozen MiniLM emb., text-projection)": (("tabular", "text"), "minilm-frozen", None),
    "tabular+text (tiny-BERT, fine-tuned)": (("tabular", "text"), "tiny-bert", None),
    "tabular+text (MiniLM top layer fine-tuned)": (("tabular", "text"), "minilm-finetune-top", None),
    "default image: tabular+image (pixel-projection)": (("tabular", "image"), None, "pixel-projection"),
    "tabular+image (small CNN)": (("tabular", "image"), None, "small-cnn"),
    "tabular+image (ResNet-18-GN)": (("tabular", "image"), None, "resnet18-gn"),
}
MODES = ("hooks", "functorch", "ghost", "ew", "fused")
OPACUS_GHOST = "ghost-opacus"  # Opacus' own ghost optimizer (deepcopy per step), beside ours: the before/after
VMAP = "vmap-model"  # benchmark-only row: whole-model torch.func per-sample gradients (not wired into training)
WARMUP = 3
warnings.filterwarnings("ignore", message="Secure RNG turned off")  # benchmark noise, not a finding
warnings.filterwarnings("ignore", message="Full backward hook is firing")


def config_of(mods, text, image, fusion: str) -> FusionConfig:
    projection = int(app_defaults()["text-projection"]) if text == "minilm-frozen" else 0
    return FusionConfig(modalities=mods, fusion=fusion, tabular=TabularEncoderConfig(in_features=7),
                        text=TextEncoderConfig(kind=text, public_projection=projection) if text else None,
                        image=ImageEncoderConfig(kind=image) if image else None)


def _batch(mods, text, b: int, device) -> dict[str, torch.Tensor]:
    x = {"tabular": torch.randn(b, 7), "tabular_mask": torch.ones(b, 7)}
    if "text" in mods:
        if text == "minilm-frozen":
            x["text"] = torch.randn(b, 384)
        elif text == "minilm-finetune-top":  # MiniLM's hidden states before its last layer
            x["text"] = torch.randn(b, 64, 384)
            x["text_attention_mask"] = torch.ones(b, 64, dtype=torch.long)
        else:
            x["text"] = torch.randint(1000, 2000, (b, 64))
            x["text_attention_mask"] = torch.ones(b, 64, dtype=torch.long)
    if "image" in mods:
        x["image"] = torch.rand(b, 1, 28, 28)
    x["modality_mask"] = torch.ones(b, len(mods))
    x["label"] = torch.randint(0, 2, (b,))
    return {k: v.to(device) for k, v in x.items()}


class _Rows(torch.utils.data.Dataset):
    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["label"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.batch.items()}


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
_LIBC.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD = 64 KiB: tensor buffers are mmapped and go back to the OS when freed


def _reset_peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    gc.collect()
    _LIBC.malloc_trim(0)  # freed heap pages back to the OS, so the peak below is this run's own
    with open("/proc/self/clear_refs", "w") as fh:  # resets VmHWM to the current RSS (Linux >= 4.0)
        fh.write("5")
    return _rss()


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM"))


@dataclass
class Timing:
    ms: float  # median step time
    peak_mb: float  # memory the steps added at their peak


def sgd_step(model: nn.Module, opt, criterion, batch) -> Callable[[], None]:
    """One optimizer step of ``model`` on ``batch`` (plain or any Opacus mode: the same three calls)."""
    x = {k: v for k, v in batch.items() if k not in ("modality_mask", "label")}
    mask, y = batch["modality_mask"], batch["label"]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        criterion(model(x, mask), y).backward()
        opt.step()

    step.release = lambda: opt.zero_grad(set_to_none=True)  # drop the last step's (per-sample) gradients
    return step


def time_steps(step: Callable[[], None], steps: int, device: torch.device) -> Timing:
    """Median time of ``steps`` calls after WARMUP, and the memory they add at their peak (freed again after)."""
    base = _reset_peak(device)
    out = []
    for i in range(steps + WARMUP):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= WARMUP:
            out.append(time.perf_counter() - t)
    peak = _peak(device)
    getattr(step, "release", lambda: None)()  # so that the next run's peak is its own
    return Timing(statistics.median(out) * 1e3, (peak - base) / 2**20)


def vmap_model_step(cfg: FusionConfig, batch, device: torch.device, *, sigma: float = 1.0, clip: float = 1.0,
                    lr: float = 0.01) -> tuple[Callable[[], None], Callable[[], torch.Tensor]]:
    """BENCHMARK ONLY, not an Opacus mode and not used in training: DP-SGD with the whole model's per-sample
    gradients from one ``torch.func.vmap(grad(...))``, flat clipping, Gaussian noise, SGD. Returns the step and a
    function giving the clipped sum (no noise) of the batch, which ``measure`` checks against Opacus' hooks mode."""
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    model = FusionModel(cfg).to(device).train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    x = {k: v for k, v in batch.items() if k not in ("modality_mask", "label")}
    mask, y = batch["modality_mask"], batch["label"]
    n = len(y)

    def loss_one(p, xi, mi, yi):
        out = functional_call(model, p, ({k: v.unsqueeze(0) for k, v in xi.items()}, mi.unsqueeze(0)))
        return nn.functional.cross_entropy(out, yi.unsqueeze(0))

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0, 0), randomness="different")

    def clipped_sum() -> torch.Tensor:
        g = per_sample({k: v.detach() for k, v in params.items()}, x, mask, y)
        flat = torch.cat([g[k].reshape(n, -1) for k in params], dim=1)
        return (clip / (flat.norm(dim=1) + 1e-6)).clamp(max=1.0) @ flat

    def step() -> None:
        summed = clipped_sum()
        update = (summed + torch.normal(0.0, sigma * clip, summed.shape, device=summed.device)) / n
        with torch.no_grad():
            offset = 0
            for p in params.values():
                p -= lr * update[offset:offset + p.numel()].view_as(p)
                offset += p.numel()

    return step, clipped_sum


def _without_dropout(cfg: FusionConfig) -> FusionConfig:
    subs = {m: dataclasses.replace(getattr(cfg, m), dropout=0.0) for m in cfg.modalities}
    return dataclasses.replace(cfg, dropout=0.0, **subs)


def check_vmap(cfg: FusionConfig, batch, device: torch.device) -> None:
    """The vmap row is only printed if its clipped sum equals Opacus' (hooks, no noise, no dropout)."""
    cfg = _without_dropout(cfg)
    _, clipped_sum = vmap_model_step(cfg, batch, device)
    model, opt, criterion = make_dp(cfg, "hooks", batch, device, noise=0.0)
    opt.expected_batch_size = 1  # no division by the batch size: the sum itself
    x = {k: v for k, v in batch.items() if k not in ("modality_mask", "label")}
    opt.zero_grad(set_to_none=True)
    criterion(model(x, batch["modality_mask"]), batch["label"]).backward()
    opt.pre_step()
    opacus = torch.cat([p.grad.reshape(-1) for p in opt.params])
    torch.testing.assert_close(clipped_sum(), opacus, rtol=1e-4, atol=1e-5)


def make_dp(cfg: FusionConfig, mode: str, batch, device: torch.device, *, noise: float = 1.0,
            opacus_own: bool = False):
    """(model, optimizer, criterion) of DP-SGD in ``mode``, wired as ``client/train.py`` wires it (make_private
    of ``common.models.dp_optimizers.PrivacyEngine``); ``opacus_own``: Opacus' ``PrivacyEngine`` itself."""
    from opacus import PrivacyEngine as OpacusEngine

    from common.models.dp_optimizers import PrivacyEngine

    engine = OpacusEngine if opacus_own else PrivacyEngine
    torch.manual_seed(0)
    model = FusionModel(cfg).to(device).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    loader = DataLoader(_Rows(batch), batch_size=len(batch["label"]))
    made = engine(accountant="prv").make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=noise, max_grad_norm=1.0,
        poisson_sampling=False, grad_sample_mode=mode, criterion=nn.CrossEntropyLoss())
    if len(made) == 4:  # ghost and fused: the criterion whose backward clips
        dp_model, dp_opt, criterion, _ = made
        return dp_model, dp_opt, criterion
    dp_model, dp_opt, _ = made
    return dp_model, dp_opt, nn.CrossEntropyLoss()


def measure(cfg: FusionConfig, batch, *, steps: int, repeats: int, device: torch.device,
            vmap_row: bool, modes: tuple[str, ...] = (*MODES, OPACUS_GHOST)) -> dict[str, Timing | str]:
    """Plain and every mode, interleaved ``repeats`` times (a load change on a shared machine hits all alike);
    the median over the repeats of each one's median step; peak memory from the first repeat."""
    torch.manual_seed(0)
    plain = FusionModel(cfg).to(device).train()
    runs: dict[str, Callable[[], None] | str] = {
        "plain": sgd_step(plain, torch.optim.SGD(plain.parameters(), lr=0.01), nn.CrossEntropyLoss(), batch)}
    for mode in modes:
        try:
            runs[mode] = sgd_step(*make_dp(cfg, mode.removesuffix("-opacus"), batch, device,
                                           opacus_own=mode == OPACUS_GHOST), batch)
            time_steps(runs[mode], 1, device)  # a mode that does not support a layer fails here
        except Exception as err:  # noqa: BLE001 - an unsupported mode is a result
            runs[mode] = f"unsupported: {type(err).__name__}: {str(err).splitlines()[0][:70]}"
    if vmap_row:
        try:
            check_vmap(cfg, batch, device)
            runs[VMAP] = vmap_model_step(cfg, batch, device)[0]
        except Exception as err:  # noqa: BLE001
            runs[VMAP] = f"unsupported: {type(err).__name__}: {str(err).splitlines()[0][:70]}"
    found: dict[str, list[Timing]] = {k: [] for k, v in runs.items() if not isinstance(v, str)}
    for _ in range(repeats):
        for name in found:
            found[name].append(time_steps(runs[name], steps, device))
    out: dict[str, Timing | str] = {k: v for k, v in runs.items() if isinstance(v, str)}
    for name, timings in found.items():
        out[name] = Timing(statistics.median(t.ms for t in timings), timings[0].peak_mb)
    return out


def main() -> None:
    global WARMUP
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every mode (median is reported)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fusion", default="attention")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--no-vmap", action="store_true", help="skip the whole-model torch.func row")
    ap.add_argument("--modes", default=",".join((*MODES, OPACUS_GHOST)),
                    help="comma-separated grad-sample modes (default: all, and ghost with Opacus' own optimizer)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before the timed ones")
    ap.add_argument("--models", default="", help="comma-separated substrings of the variant names (default: all)")
    args = ap.parse_args()
    WARMUP = args.warmup
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"batch {args.batch}, {args.repeats} x {args.steps} timed steps after {WARMUP} warm-up, {args.threads} threads, "
          f"fusion={args.fusion}, torch {torch.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'model':44s} {'params':>10s} {'mode':>10s} {'ms/step':>9s} {'x plain':>8s} {'peak MB':>8s}")
    chosen = [n for n in VARIANTS if not args.models or any(s in n for s in args.models.split(","))]
    for name in chosen:
        mods, text, image = VARIANTS[name]
        cfg = config_of(mods, text, image, args.fusion)
        batch = _batch(mods, text, args.batch, device)
        n = sum(p.numel() for p in FusionModel(cfg).parameters() if p.requires_grad)
        results = measure(cfg, batch, steps=args.steps, repeats=args.repeats, device=device,
                          vmap_row=not args.no_vmap, modes=tuple(args.modes.split(",")))
        base, default = results["plain"], grad_sample_mode(cfg)
        for i, mode in enumerate(m for m in ("plain", *MODES, OPACUS_GHOST, VMAP) if m in results):
            t = results[mode]
            cells = t if isinstance(t, str) else f"{t.ms:>9.2f} {t.ms / base.ms:>8.2f} {t.peak_mb:>8.1f}"
            label = f"{name:44s} {n:>10,d}" if i == 0 else f"{'':44s} {'':>10s}"
            print(f"{label} {('*' if mode == default else ' ') + mode:>10s} {cells}", flush=True)
    print(f"* = the default of common/models/grad_sample.py ({', '.join(f'{k}: {v}' for k, v in GRAD_SAMPLE_MODES.items())})")


if __name__ == "__main__":
    main()
