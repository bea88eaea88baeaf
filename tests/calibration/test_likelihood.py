"""The Gaussian likelihood (whitening of predictions) and priors in unconstrained coordinates."""

from __future__ import annotations

import math

import pytest
import torch

from climgrad.calibration.config import LikelihoodConfig, VariableErrorConfig
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.likelihood import GaussianLikelihood
from climgrad.data import ObservedVariable, ObsSet
from climgrad.models import EBM1D
from climgrad.params import Prior, configure_parameters, display_names, raw_gaussian_prior


def _variable(name: str, values: torch.Tensor, error: float, weights: torch.Tensor | None = None):
    n = values.shape[0]
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64) if weights is None else weights
    return ObservedVariable(
        name=name,
        model_output=name,
        operator="identity",
        units="K",
        weight=1.0,
        dims=("time",),
        values=values,
        mask=torch.ones(n, dtype=torch.bool),
        weights=weights,
        error=torch.full((n,), error, dtype=torch.float64),
    )


def _series(n: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_independent_errors_give_the_textbook_chi_square() -> None:
    observed = _series()
    prediction = observed + 0.3 * _series(seed=1)
    likelihood = GaussianLikelihood(ObsSet({"t": _variable("t", observed, 0.5)}))
    nll = likelihood.negative_log_likelihood(likelihood.whiten({"t": prediction}))
    expected = 0.5 * ((prediction - observed) / 0.5).square().sum()
    assert float(nll) == pytest.approx(float(expected), rel=1e-12)
    # The point-estimate misfit is this divided by N/2: a mean chi-square.
    assert likelihood.size == 12


def test_effective_n_and_area_weights_scale_the_information() -> None:
    observed = _series()
    prediction = observed + 1.0
    weights = torch.linspace(1.0, 3.0, 12, dtype=torch.float64)
    weights = weights / weights.sum()
    obs = ObsSet({"t": _variable("t", observed, 1.0, weights)})
    config = LikelihoodConfig({"t": VariableErrorConfig(effective_n=3.0)})
    likelihood = GaussianLikelihood(obs, config)
    nll = likelihood.negative_log_likelihood(likelihood.whiten({"t": prediction}))
    # Three independent observations' worth of a unit residual, however the weights spread it.
    assert float(nll) == pytest.approx(0.5 * 3.0, rel=1e-12)
    assert "3 observations" in likelihood.describe()["t"]


def test_ar1_whitening_is_the_exact_gaussian_likelihood() -> None:
    n, phi, sigma = 10, 0.6, 0.2
    observed = _series(n)
    prediction = observed + 0.1 * _series(n, seed=3)
    config = LikelihoodConfig({"t": VariableErrorConfig(ar1_phi=phi, extra_error=0.1)})
    likelihood = GaussianLikelihood(ObsSet({"t": _variable("t", observed, sigma)}), config)
    nll = likelihood.negative_log_likelihood(likelihood.whiten({"t": prediction}))
    total = math.sqrt(sigma**2 + 0.1**2)
    lags = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs().double()
    covariance = total**2 * phi**lags  # stationary AR(1)
    residual = prediction - observed
    expected = 0.5 * residual @ torch.linalg.solve(covariance, residual)
    assert float(nll) == pytest.approx(float(expected), rel=1e-10)


def test_batched_predictions_whiten_row_by_row() -> None:
    observed = _series()
    likelihood = GaussianLikelihood(ObsSet({"t": _variable("t", observed, 0.5)}))
    batch = observed + _series(seed=5)[:, None].T * torch.ones(3, 1, dtype=torch.float64)
    rows = likelihood.whiten({"t": batch})
    assert rows.shape == (3, 12)
    for j in range(3):
        assert torch.equal(rows[j], likelihood.whiten({"t": batch[j]}))


def test_zero_weight_variables_are_left_out_and_settings_are_checked() -> None:
    obs = ObsSet({"a": _variable("a", _series(), 1.0), "b": _variable("b", _series(seed=2), 1.0)})
    likelihood = GaussianLikelihood(obs, None, {"a": 1.0, "b": 0.0})
    assert list(likelihood.slices) == ["a"]
    with pytest.raises(CalibrationError, match=r"likelihood.variables.c names no observation"):
        GaussianLikelihood(obs, LikelihoodConfig({"c": VariableErrorConfig()}))
    with pytest.raises(CalibrationError, match=r"ar1_phi must lie in \(-1, 1\)"):
        GaussianLikelihood(obs, LikelihoodConfig({"a": VariableErrorConfig(ar1_phi=1.0)}))
    with pytest.raises(CalibrationError, match="choose one error model"):
        GaussianLikelihood(
            obs, LikelihoodConfig({"a": VariableErrorConfig(ar1_phi=0.5, effective_n=3.0)})
        )


def test_lag1_autocorrelation_of_residuals() -> None:
    n = 400
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(n, generator=generator, dtype=torch.float64)
    series = torch.zeros(n, dtype=torch.float64)
    for t in range(1, n):
        series[t] = 0.7 * series[t - 1] + noise[t]
    obs = ObsSet({"t": _variable("t", torch.zeros(n, dtype=torch.float64), 1.0)})
    likelihood = GaussianLikelihood(obs)
    estimate = likelihood.lag1_autocorrelation(obs, {"t": series})["t"]
    assert estimate == pytest.approx(0.7, abs=0.1)


# -- priors in unconstrained coordinates ------------------------------------------------------


def _ebm() -> EBM1D:
    return EBM1D(bands=18, dtype=torch.float64)


def test_raw_prior_of_a_log_transformed_lognormal_is_exact() -> None:
    model = _ebm()
    configure_parameters(model, {"A": {"prior": {"kind": "lognormal", "loc": 5.3, "scale": 0.1}}})
    mean, variance = raw_gaussian_prior(display_names(model)["A"])
    assert float(mean) == pytest.approx(5.3, abs=1e-6)
    assert float(variance) == pytest.approx(0.01, rel=1e-3)


def test_raw_prior_of_a_uniform_on_a_sigmoid_is_the_logistic_moment_match() -> None:
    model = _ebm()
    configure_parameters(model, {"a0": {"prior": {"kind": "uniform"}}})
    mean, variance = raw_gaussian_prior(display_names(model)["a0"])
    assert float(mean) == pytest.approx(0.0, abs=1e-9)
    assert float(variance) == pytest.approx(math.pi**2 / 3, rel=2e-2)


def test_missing_and_improper_priors_are_clear_errors() -> None:
    model = _ebm()
    with pytest.raises(ValueError, match=r"A has no prior; set model.params.A.prior"):
        raw_gaussian_prior(display_names(model)["A"])
    with pytest.raises(ValueError, match="uniform prior needs both bounds"):
        Prior("uniform").quantiles(torch.tensor([0.5], dtype=torch.float64), (0.0, None))
    with pytest.raises(ValueError, match="unknown key"):
        configure_parameters(model, {"A": {"prior": {"kind": "normal", "mean": 1.0}}})


def test_ar1_accepts_a_late_start_and_refuses_gaps() -> None:
    values = _series(10)
    variable = _variable("t", values, 1.0)
    variable.mask[:4] = False  # the series starts late (energy inventory: from 1971)
    variable.weights[:4] = 0.0
    config = LikelihoodConfig({"t": VariableErrorConfig(ar1_phi=0.5)})
    likelihood = GaussianLikelihood(ObsSet({"t": variable}), config)
    assert likelihood.size == 6
    prediction = values + 1.0
    prediction[:4] = math.nan  # masked elements never reach the likelihood
    assert bool(torch.isfinite(likelihood.whiten({"t": prediction})).all())
    variable.mask[6] = False
    with pytest.raises(CalibrationError, match="valid values are consecutive"):
        GaussianLikelihood(ObsSet({"t": variable}), config)
