"""Stochastic layers (stochastic normalizing flows): Markov kernels as flow layers."""

from .mcmc import AnnealedEnergy, Langevin, Metropolis, as_energy, standard_normal_energy

__all__ = ["AnnealedEnergy", "Langevin", "Metropolis", "as_energy", "standard_normal_energy"]
