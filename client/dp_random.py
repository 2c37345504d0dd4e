"""Where one round of DP-SGD gets its randomness: the Poisson batch sampling, the Gaussian noise, and the
model's own draws (``nn.Dropout`` masks).

DP-SGD's guarantee rests on the noise being unknown to whoever sees the update. A seed taken from the
run config is known to the server that wrote that config, and the same seed at every site draws every
site's noise from the same stream (where it comes out equal, differences of two sites' updates cancel it). So the default source is
``secret``: fresh OS entropy (:mod:`secrets`) for each round, held only in this process, never written
to disk or sent. ``run-seed`` derives the seeds from the run's seed, the site's name and the round:
reproducible simulations and tests, at the price that the ε holds only against parties who do not know
the run config. ``common.config.load_site_file`` never lets a deployed site use it.

Opacus' ``secure_mode`` is the stronger option (a CSPRNG and noise robust to floating-point attacks);
it needs the ``torchcsprng`` package, and when it is on, Opacus ignores these generators.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

__all__ = ["DpRandomness", "dp_randomness", "model_randomness", "NOISE_SEED_SOURCES"]


@dataclass(frozen=True)
class DpRandomness:
    sampling: torch.Generator  # Opacus' Poisson sampler: which records are in each batch
    noise: torch.Generator  # Opacus' DPOptimizer: the Gaussian noise added to the clipped gradient sum
    source: str  # "secret" | "run-seed" (common.config.NOISE_SEEDS)
    model_seed: int  # seeds torch's global RNG while training: the model's nn.Dropout masks (client.train)


def _secret(run_seed: int, site: str, server_round: int) -> tuple[int, int, int]:
    del run_seed, site, server_round  # deliberately unused: nothing public may determine these seeds
    return secrets.randbits(64), secrets.randbits(64), secrets.randbits(63)


def _from_run_seed(run_seed: int, site: str, server_round: int) -> tuple[int, int, int]:
    digest = hashlib.sha256(f"fedfusion-dp|{run_seed}|{site}|{server_round}".encode()).digest()
    return (int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:16], "little"),
            int.from_bytes(digest[16:24], "little") >> 1)


#: noise-seed setting -> (run seed, site, round) -> (sampling seed, noise seed, model seed)
NOISE_SEED_SOURCES: dict[str, Callable[[int, str, int], tuple[int, int, int]]] = {
    "secret": _secret,
    "run-seed": _from_run_seed,
}


def dp_randomness(source: str, *, run_seed: int, site: str, server_round: int,
                  device: torch.device | str = "cpu") -> DpRandomness:
    """Two independent generators and a seed for one site's round of DP-SGD, seeded as ``noise-seed`` says.

    The sampling generator lives on the CPU (Opacus' Poisson sampler draws ``torch.rand`` there); the noise
    generator on ``device``, the training device (``torch.normal`` refuses a generator of another device).
    """
    try:
        make = NOISE_SEED_SOURCES[source]
    except KeyError:
        raise ValueError(f"noise-seed must be one of {sorted(NOISE_SEED_SOURCES)}; got {source!r}") from None
    sampling_seed, noise_seed, model_seed = make(run_seed, site, server_round)
    return DpRandomness(sampling=torch.Generator().manual_seed(sampling_seed),
                        noise=torch.Generator(device=torch.device(device)).manual_seed(noise_seed), source=source,
                        model_seed=model_seed)


@contextlib.contextmanager
def model_randomness(rng: DpRandomness, device: torch.device | str = "cpu") -> Iterator[None]:
    """Inside: torch's global RNG (CPU, and ``device``'s if it is a GPU) seeded by ``rng.model_seed``.

    ``nn.Dropout`` draws its masks from torch's global RNG, one mask per forward pass in batch order. Seeded
    with a PUBLIC seed, the mask a record gets would depend on which records were sampled before it, the same
    flaw ``client.train.dropout_generator`` removes for modality dropout; seeded secretly, the masks are
    i.i.d. draws independent of the data and of what is released, and each step stays a mixture of
    sensitivity-C Gaussian mechanisms (ε unchanged). The global state is restored on exit, so nothing after
    training inherits the secret seed.
    """
    device = torch.device(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(rng.model_seed)
        yield
