"""Every technique module is imported here, once, so the registry is complete on import."""
from . import attention, cam, drise, gradients, lrp, perturbation, shapley  # noqa: F401
