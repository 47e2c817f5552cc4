"""Every technique module is imported here, once, so the registry is complete on import."""
from galleryvis.attribution import cam, concepts, dff, drise, gradients, lrp, perturbation, rollout, shapley  # noqa: F401
