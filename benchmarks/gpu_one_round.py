"""One site, one DP-SGD round, on CUDA when present: prints the device, the step time and ε.

It is also the CUDA check of issue 10, finding 8: the DP noise generator is created on the training device
(``client.dp_random.dp_randomness(device=...)``) and checked before the round is reserved; a CPU generator handed
to Opacus on CUDA makes ``torch.normal`` raise AFTER the reservation. The script exits 1 unless the round trained
(reserve + confirm in the ledger) with the noise generator on the model's device.

    .venv/bin/python benchmarks/gpu_one_round.py [--site cleveland] [--text-encoder minilm-frozen]
        [--batch-size 32] [--local-epochs 1] [--device auto|cuda|cpu] [--require-cuda]

The round is the real one (``client.round.SiteRound.train``): the site's data through its loader,
the global model's initial weights, σ calibrated for the run, the ledger's reserve/confirm, Opacus'
DP-SGD. Only the site state is a fresh temporary folder, so ε is that of this one round. Without
CUDA it says so and runs on the CPU for reference (``--require-cuda`` exits 2 instead).

Step time = median time between consecutive optimizer steps (a global optimizer step hook, with
``torch.cuda.synchronize()`` on CUDA), so data loading, model building and calibration are not in it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--site", default="cleveland", help="site of the packaged hospitals scenario")
    p.add_argument("--text-encoder", default="minilm-frozen", choices=("minilm-frozen", "minilm-finetune-top",
                                                                      "tiny-bert"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--require-cuda", action="store_true", help="exit 2 when no CUDA device is present")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the round and print the numbers; returns the exit code."""
    a = _args(argv)
    sys.path.insert(0, str(REPO))
    import torch

    from client.round import SiteRound
    from common.config import app_defaults, load_scenario, parse_run_config, resolve_site
    from common.factory import build_model, initial_trainable_state

    cuda = torch.cuda.is_available()
    if not cuda:
        print("no CUDA device present (torch.cuda.is_available() is False): "
              + ("--require-cuda given, stopping" if a.require_cuda else "running on the CPU for reference"))
        if a.require_cuda or a.device == "cuda":
            return 2
    device = a.device if a.device != "auto" else ("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device} - {name}; torch {torch.__version__}")

    stamps: list[float] = []

    def _on_step(_opt, _args, _kwargs) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    from torch.optim.optimizer import register_optimizer_step_post_hook

    hook = register_optimizer_step_post_hook(_on_step)
    with tempfile.TemporaryDirectory(prefix="gpu-one-round-") as state:
        cfg = {**app_defaults(), "num-server-rounds": 1, "local-epochs": a.local_epochs, "batch-size": a.batch_size,
               "text-encoder": a.text_encoder, "device": device, "data-dir": str(REPO / "data"),
               "site-state-root": state}
        run = parse_run_config(cfg)
        scenario = load_scenario(run.paths.scenario_file)
        names = [s.name for s in scenario.sites]
        if a.site not in names:
            print(f"unknown site {a.site!r}; sites: {names}", file=sys.stderr)
            return 1
        site = resolve_site({"partition-id": names.index(a.site)}, run)
        job = SiteRound(run=run, scenario=scenario, site=site, server_round=1, federation_id="gpu-one-round",
                        run_id="0")
        initial = initial_trainable_state(build_model(run.model, scenario=scenario, seed=run.federation.seed))
        t0 = time.perf_counter()
        job.data()  # load + (cached) frozen embeddings, timed apart from training
        t1 = time.perf_counter()
        outcome = job.train(initial)
        t2 = time.perf_counter()
    hook.remove()
    p = outcome.privacy
    if p.get("status") != "trained":
        print(f"the round did not train: status {p.get('status')}, code {p.get('code')!r}: {p.get('reason')}")
        return 1
    from client.dp_random import dp_randomness
    from client.train import noise_generator_problem

    rng = dp_randomness("secret", run_seed=0, site=a.site, server_round=1, device=torch.device(device))
    problem = noise_generator_problem(rng, torch.device(device))
    print(f"noise generator on {rng.noise.device}, model on {device}: " + (problem or "match (checked before the "
                                                                                      "reservation)"))
    if problem:
        return 1
    gaps = [b - a_ for a_, b in zip(stamps, stamps[1:])]
    step = statistics.median(gaps) if gaps else float("nan")
    print(f"site: {a.site} (max-records {outcome.metrics.get('num-examples', 0):.0f}, public), text encoder "
          f"{a.text_encoder}, batch {a.batch_size}, {a.local_epochs} local epoch(s)")
    print(f"data load + embeddings: {t1 - t0:.2f} s; round (model, calibration, DP-SGD): {t2 - t1:.2f} s")
    print(f"DP-SGD steps: {p.get('steps')}; median step time: {step * 1000:.1f} ms")
    print(f"epsilon ({str(p.get('accountant', '')).upper()}): {p.get('epsilon'):.4f}; epsilon (RDP): "
          f"{p.get('epsilon-rdp'):.4f}; delta: {p.get('delta'):.1e}; noise multiplier: {p.get('noise-multiplier'):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
