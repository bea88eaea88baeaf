"""Posterior sampling with the No-U-Turn Sampler (NUTS), through Pyro, with ArviZ diagnostics.

Hamiltonian Monte Carlo (Neal 2011, in *Handbook of Markov Chain Monte Carlo*, ch. 5) samples a
density :math:`\\pi(u) \\propto \\exp(-\\Phi(u))` by simulating Hamiltonian dynamics with the energy

.. math::

    H(u, r) = \\Phi(u) + \\tfrac12 r^T M^{-1} r, \\qquad r \\sim N(0, M),

with the leapfrog integrator (step size :math:`\\epsilon`) and a Metropolis correction for its
error. It moves far with few rejections because every step follows the gradient
:math:`\\nabla \\Phi`, which here comes from the model's own autograd. NUTS (Hoffman & Gelman
2014, JMLR 15, 1593) chooses the trajectory length by itself: it doubles the trajectory forwards or
backwards in time until it starts to turn back (a "U-turn", :math:`(u^+ - u^-) \\cdot r < 0` at
either end) and draws the next state from the trajectory; during warmup it tunes
:math:`\\epsilon` by dual averaging to a target mean acceptance probability (``target_accept``)
and adapts a diagonal (or dense) mass matrix :math:`M` to the posterior's scales. Pyro's
implementation (Bingham et al. 2019, JMLR 20, 1) uses multinomial sampling from the trajectory
(Betancourt 2017, arXiv:1701.02434).

Diagnostics (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021, Bayesian Analysis 16, 667),
computed by ArviZ on every unconstrained coordinate:

``r_hat``
    Rank-normalised split :math:`\\hat R`: compares the variance between (split halves of)
    chains to the variance within them, after replacing draws by their normal scores. Values near
    1 mean the chains agree; the rule of thumb is :math:`\\hat R < 1.01` before trusting the
    draws (1.05 for a rough look). Larger values mean the chains have not mixed: run longer, start
    closer, or suspect several modes.
``ess``
    Bulk effective sample size: the number of independent draws with the same Monte Carlo error
    for the posterior mean and central quantiles. The Monte Carlo standard error of a posterior
    mean is about :math:`\\mathrm{sd} / \\sqrt{\\mathrm{ESS}}`; ESS > 400 (100 per chain with four
    chains) is the usual minimum for reliable :math:`\\hat R` and summaries.
``divergences``
    Trajectories whose energy error exceeded 1000 (a leapfrog step went unstable). Any
    divergence after warmup suggests regions of high curvature that the sampler does not explore
    correctly: raise ``target_accept`` (smaller steps) or reparameterise.
``acceptance``
    The mean Metropolis acceptance probability over each trajectory; after warmup its mean should
    be near ``target_accept``. ``step_size`` is the adapted :math:`\\epsilon` per chain.

Chains run one after another in this process (no multiprocessing, so the potential may close
over anything, including GPU tensors). Chain :math:`k` draws its randomness from a seed derived
from ``(seed, k)`` inside ``torch.random.fork_rng``, so the same arguments give bit-identical
samples and the caller's global random state is left as it was.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    import arviz

__all__ = ["NutsProgress", "NutsResult", "nuts"]

_INSTALL_HINT = "install the posterior extra: pip install 'climgrad[posterior]'"


@dataclass(frozen=True)
class NutsProgress:
    """What ``callback`` receives after every NUTS iteration (warmup and sampling).

    Attributes:
        chain: chain index, from 0.
        warmup: True during warmup (adaptation), False while drawing kept samples.
        iteration: index of the iteration within its stage, from 0.
        u: (p,) current state (a copy).
        step_size: the current leapfrog step size.
        mean_accept_prob: running mean acceptance probability within the stage.
    """

    chain: int
    warmup: bool
    iteration: int
    u: Tensor
    step_size: float
    mean_accept_prob: float


@dataclass
class NutsResult:
    """Draws and diagnostics of :func:`nuts` (module docstring for what the diagnostics mean).

    Attributes:
        samples: (chains, draws, p) draws after warmup, unconstrained coordinates.
        acceptance: (chains, draws) mean acceptance probability of each draw's trajectory.
        step_size: (chains,) adapted leapfrog step size of each chain.
        divergences: (chains,) number of divergent transitions after warmup.
        divergent: (chains, draws) True where the draw's trajectory diverged.
        potential: (chains, draws) negative log posterior of each draw.
        ess: (p,) bulk effective sample size (ArviZ, rank-normalised); NaN with fewer than 4
            draws.
        r_hat: (p,) rank-normalised split R-hat (ArviZ); NaN with fewer than 4 draws or a
            single chain.
        warmup: number of warmup iterations per chain.
    """

    samples: Tensor
    acceptance: Tensor
    step_size: Tensor
    divergences: Tensor
    divergent: Tensor
    potential: Tensor
    ess: Tensor
    r_hat: Tensor
    warmup: int

    def to_inference_data(self, names: Sequence[str] | None = None) -> arviz.InferenceData:
        """The draws as ArviZ InferenceData: posterior ``u`` and sample_stats.

        Args:
            names: labels of the p coordinates (the ``parameter`` dimension); defaults to
                ``0 .. p-1``.

        Returns:
            InferenceData with group ``posterior`` (variable ``u``, dims chain, draw, parameter)
            and group ``sample_stats`` (``acceptance_rate``, ``step_size``, ``diverging``, ``lp``
            = the log posterior up to a constant, the negative potential).
        """
        return _inference_data(self.samples, names, self)


def _import_arviz() -> Any:
    try:
        with warnings.catch_warnings():
            # ArviZ 0.2x announces its 1.0 refactor with a FutureWarning once a day on import.
            warnings.simplefilter("ignore", FutureWarning)
            import arviz
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ImportError(f"NUTS diagnostics need ArviZ; {_INSTALL_HINT}.") from error
    return arviz


def _inference_data(
    samples: Tensor, names: Sequence[str] | None, result: NutsResult | None
) -> arviz.InferenceData:
    az = _import_arviz()
    p = samples.shape[-1]
    if names is not None and len(names) != p:
        raise ValueError(f"`names` must have {p} entries, one per parameter; got {len(names)}.")
    coords = {"parameter": list(names) if names is not None else list(range(p))}
    dims = {"u": ["parameter"]}
    posterior = {"u": samples.detach().cpu().to(torch.float64).numpy()}
    stats = None
    if result is not None:
        draws = samples.shape[1]
        stats = {
            "acceptance_rate": result.acceptance.cpu().numpy(),
            "step_size": np.repeat(result.step_size.cpu().numpy()[:, None], draws, axis=1),
            "diverging": result.divergent.cpu().numpy(),
            "lp": -result.potential.cpu().numpy(),
        }
    return az.from_dict(posterior=posterior, sample_stats=stats, coords=coords, dims=dims)


def _diagnostics(samples: Tensor) -> tuple[Tensor, Tensor]:
    """Bulk ESS and rank-normalised split R-hat of (chains, draws, p) samples, per coordinate.

    NaN where ArviZ cannot compute them (and would log a warning): ESS with fewer than 4 draws,
    R-hat also with a single chain.
    """
    chains, draws, p = samples.shape
    nan = torch.full((p,), math.nan, dtype=torch.float64)
    if draws < 4:
        return nan, nan.clone()
    az = _import_arviz()
    dataset = az.convert_to_dataset({"u": samples.detach().cpu().to(torch.float64).numpy()})
    with warnings.catch_warnings():
        # Constant chains give NaN (with a RuntimeWarning): NaN is the answer.
        warnings.simplefilter("ignore", RuntimeWarning)
        ess = torch.as_tensor(np.asarray(az.ess(dataset, method="bulk")["u"].values, np.float64))
        if chains < 2:
            return ess, nan
        r_hat = az.rhat(dataset, method="rank")["u"].values
    return ess, torch.as_tensor(np.asarray(r_hat, dtype=np.float64))


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def _seeds(seed: int, chain: int) -> tuple[int, int]:
    """Seeds of chain ``chain``'s start jitter and of its run, independent of the other chains.

    Child ``chain`` of ``numpy.random.SeedSequence(seed)``: decorrelated from its neighbours, and
    chain k gets the same seeds whatever the number of chains.
    """
    state = np.random.SeedSequence(seed, spawn_key=(chain,)).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1)), int(state[1] >> np.uint64(1))


class _Recorder:
    """Pyro ``hook_fn``: per-draw acceptance probability and potential, and the user callback.

    Pyro's kernel keeps only the running mean :math:`m_n` of the acceptance probability within a
    stage (``_mean_accept_prob``); the draw's own is :math:`a_n = n m_n - (n - 1) m_{n-1}`. The
    potential of the current state is the kernel's cache (``_potential_energy_last``), and the
    kernel lists the indices of divergent draws after warmup (``_divergences``).
    """

    def __init__(self, chain: int, callback: Callable[[NutsProgress], None] | None) -> None:
        self.chain = chain
        self.callback = callback
        self.acceptance: list[float] = []
        self.potential: list[float] = []
        self.divergent: list[bool] = []
        self._previous_mean = 0.0

    def __call__(self, kernel: Any, params: dict[str, Tensor], stage: str, i: int) -> None:
        mean_accept = float(kernel._mean_accept_prob)
        is_warmup = stage.startswith("Warmup")
        if not is_warmup:
            previous = self._previous_mean if i > 0 else 0.0
            self.acceptance.append(min(max((i + 1) * mean_accept - i * previous, 0.0), 1.0))
            self._previous_mean = mean_accept
            last = kernel._potential_energy_last
            self.potential.append(float(last) if last is not None else math.nan)
            divergences = kernel._divergences
            self.divergent.append(bool(divergences) and int(divergences[-1]) == i)
        if self.callback is not None:
            self.callback(
                NutsProgress(
                    chain=self.chain,
                    warmup=is_warmup,
                    iteration=i,
                    u=params["u"].detach().clone(),
                    step_size=float(kernel.step_size),
                    mean_accept_prob=mean_accept,
                )
            )


def _check_start(
    potential: Callable[[Tensor], Tensor], u: Tensor, chain: int | None, jittered: bool
) -> None:
    """Raises unless the potential is a finite differentiable scalar with a finite gradient at u."""
    where = "the starting point" if chain is None else f"the starting point of chain {chain}"
    if jittered:
        where = f"the jittered start of chain {chain}"
    fix = (
        "pass a smaller jitter, or (chains, p) starts inside the prior's support"
        if jittered
        else "start from a point inside the prior's support"
    )
    point = u.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        value = potential(point)
        if not isinstance(value, Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                "`potential` must return a scalar tensor (the negative log posterior); "
                f"got {shape}."
            )
        if not bool(torch.isfinite(value.detach()).all()):
            raise ValueError(f"the log posterior is not finite at {where}; {fix}.")
        if not value.requires_grad:
            raise ValueError(
                "`potential` does not depend differentiably on u; NUTS needs its gradient, so "
                "compute it with torch operations on u."
            )
        (grad,) = torch.autograd.grad(value.reshape(()), point, allow_unused=True)
    if grad is not None and not bool(torch.isfinite(grad).all()):
        raise ValueError(
            f"the gradient of the log posterior is not finite at {where}; start from a point "
            "where the model is differentiable."
        )


def nuts(
    potential: Callable[[Tensor], Tensor],
    initial: Tensor,
    *,
    num_samples: int,
    warmup: int,
    chains: int = 4,
    seed: int = 0,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    jitter: float = 0.1,
    dense_mass: bool = False,
    progress: bool = False,
    callback: Callable[[NutsProgress], None] | None = None,
) -> NutsResult:
    """Draws from :math:`\\pi(u) \\propto \\exp(-\\text{potential}(u))` with NUTS, chain by chain.

    Args:
        potential: negative log posterior density of a (p,) tensor, up to a constant, as a
            scalar tensor differentiable by torch autograd. Return ``inf`` (rather than raise)
            where the model fails or the prior has no support: NUTS treats that as a divergence.
        initial: (p,) start (each chain starts at ``initial + jitter * z``, z standard normal and
            seeded), or (chains, p) starts, one per chain, used as given.
        num_samples: draws kept per chain, after warmup (at least 1).
        warmup: warmup (adaptation) iterations per chain, discarded (at least 0).
        chains: number of chains (at least 1); at least 2 for a meaningful R-hat.
        seed: seed of the jitter and of every chain; the same seed gives bit-identical draws.
        target_accept: target mean acceptance probability of the step-size adaptation, in (0, 1);
            raise it (0.9, 0.95) when there are divergences.
        max_tree_depth: largest number of trajectory doublings (at most 2**max_tree_depth
            gradient evaluations per draw).
        jitter: standard deviation of the start jitter, in unconstrained coordinates (>= 0).
        dense_mass: adapt a dense mass matrix (for strongly correlated posteriors) instead of a
            diagonal one.
        progress: show Pyro's progress bar.
        callback: called with a :class:`NutsProgress` after every iteration; may raise to stop.

    Returns:
        :class:`NutsResult` with the draws, per-draw statistics and ESS/R-hat.

    Raises:
        ValueError: for bad arguments, or a start where the potential or its gradient is not
            finite.
        ImportError: without pyro-ppl or arviz (the ``posterior`` extra).
    """
    num_samples = _check_int("num_samples", num_samples, 1)
    warmup = _check_int("warmup", warmup, 0)
    chains = _check_int("chains", chains, 1)
    max_tree_depth = _check_int("max_tree_depth", max_tree_depth, 1)
    seed = _check_int("seed", seed, 0)
    if not 0.0 < float(target_accept) < 1.0:
        raise ValueError(f"`target_accept` must be in (0, 1); got {target_accept!r}. 0.8 is usual.")
    if not (math.isfinite(float(jitter)) and float(jitter) >= 0.0):
        raise ValueError(f"`jitter` must be finite and >= 0; got {jitter!r}.")
    if not callable(potential):
        raise TypeError("`potential` must be a function of a (p,) tensor.")
    if not isinstance(initial, Tensor) or not initial.is_floating_point():
        raise TypeError(
            "`initial` must be a floating tensor (float64) of shape (p,) or (chains, p)."
        )
    if initial.ndim == 1:
        noise = torch.stack(
            [
                torch.randn(
                    initial.shape[0],
                    generator=torch.Generator().manual_seed(_seeds(seed, chain)[0]),
                    dtype=torch.float64,
                )
                for chain in range(chains)
            ]
        )
        starts = initial.detach()[None, :] + float(jitter) * noise.to(initial)
    elif initial.ndim == 2 and initial.shape[0] == chains:
        starts = initial.detach().clone()
    else:
        raise ValueError(
            f"`initial` must have shape (p,) or (chains, p) = ({chains}, p); got "
            f"{tuple(initial.shape)}."
        )
    if starts.shape[1] < 1:
        raise ValueError("`initial` has no parameters; pass at least one unconstrained coordinate.")
    if not bool(torch.isfinite(starts).all()):
        raise ValueError("`initial` has non-finite entries; start from finite coordinates.")
    if initial.ndim == 1:
        _check_start(potential, initial.detach(), None, jittered=False)
    for chain in range(chains):
        _check_start(potential, starts[chain], chain, jittered=initial.ndim == 1 and jitter > 0)

    try:
        from pyro.infer import MCMC, NUTS
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ImportError(f"NUTS needs pyro-ppl; {_INSTALL_HINT}.") from error

    def site_potential(params: dict[str, Tensor]) -> Tensor:
        return potential(params["u"]).reshape(())

    samples, acceptance, step_sizes, divergent, energies = [], [], [], [], []
    devices = [starts.device] if starts.device.type == "cuda" else []
    for chain in range(chains):
        kernel = NUTS(
            potential_fn=site_potential,
            target_accept_prob=float(target_accept),
            max_tree_depth=max_tree_depth,
            full_mass=dense_mass,
        )
        recorder = _Recorder(chain, callback)
        mcmc = MCMC(
            kernel,
            num_samples=num_samples,
            warmup_steps=warmup,
            initial_params={"u": starts[chain]},
            num_chains=1,
            hook_fn=recorder,
            disable_progbar=not progress,
            transforms={},
        )
        # Pyro's NUTS draws only from torch's global generator of the parameters' device
        # (momenta, tree directions, multinomial choices): seeding it inside fork_rng makes the
        # chain reproducible and leaves the caller's random state untouched.
        with torch.random.fork_rng(devices=devices):
            chain_seed = _seeds(seed, chain)[1]
            torch.default_generator.manual_seed(chain_seed)
            if devices:
                with torch.cuda.device(starts.device):
                    torch.cuda.manual_seed(chain_seed)
            mcmc.run()
        draws = mcmc.get_samples(group_by_chain=True)["u"][0].detach()
        samples.append(draws.reshape(num_samples, -1))
        acceptance.append(torch.tensor(recorder.acceptance, dtype=torch.float64))
        energies.append(torch.tensor(recorder.potential, dtype=torch.float64))
        step_sizes.append(float(kernel.step_size))
        divergent.append(torch.tensor(recorder.divergent, dtype=torch.bool))

    stacked = torch.stack(samples)
    ess, r_hat = _diagnostics(stacked)
    divergent_t = torch.stack(divergent)
    return NutsResult(
        samples=stacked,
        acceptance=torch.stack(acceptance),
        step_size=torch.tensor(step_sizes, dtype=torch.float64),
        divergences=divergent_t.sum(dim=1),
        divergent=divergent_t,
        potential=torch.stack(energies),
        ess=ess,
        r_hat=r_hat,
        warmup=warmup,
    )
