"""Inference algorithms on flat parameter vectors: ensemble Kalman methods, Laplace, MCMC, CMA-ES.

Everything here works on tensors in the unconstrained coordinates of the parameters and on a
forward map given as a function; nothing here knows a model, an observation file or a run. The
calibration methods (:mod:`climgrad.calibration.methods`) connect these algorithms to a
:class:`~climgrad.calibration.experiment.Problem`.
"""
