"""Every change galleryvis makes to a model: the temporary ones as context managers that undo them
on exit, also after an exception, and the sanity check's re-initialization, which only a copy of
the model ever sees. The engine, the techniques, the metrics and synthesis register no hook, set
no mode or flag and rewrite no module but through these.

==================  ==========================================================================
module              changes
==================  ==========================================================================
``hooks``           forward hooks: :func:`capture` (layer outputs), :func:`replaced_output`,
                    :func:`recorded` (every output of a probe), :func:`conv_sizes`,
                    :func:`first_calls`, :func:`running` (the module stack LRP names),
                    :func:`counting`; all made by :func:`forward_hooks`
``modes``           :func:`prepared` (eval mode, frozen parameters, no in-place activations),
                    :func:`attributes_set` (timm's fused-attention flag), :func:`deterministic`
``rules``           backward rules: :func:`guided` (guided backprop, deconvnet),
                    :func:`output_rule` (DeepLIFT), :func:`redirected_relus` (lucid)
``canonizers``      :class:`Folding` (batch norm folded into convolutions, weights laid out
                    for the input), :func:`watch` (which convolution feeds which BatchNorm)
``randomization``   :func:`reinitialize`, the sanity check's re-initialization (of a copy)
==================  ==========================================================================

:func:`hook_count` counts what is left (0 after every galleryvis call). The compositions of
these (:func:`galleryvis.engine.changes.attention.attentions`, LRP's tracer, synthesis's layer tap) live with
the code that needs them and change the model only through them.
"""
from __future__ import annotations

from galleryvis.engine.changes.canonizers import Folding, watch
from galleryvis.engine.changes.forward_hooks import (capture, conv_sizes, counting, first_calls, forward_hooks, hook_count, recorded, replaced_output,
                    resolve_layer, running)
from galleryvis.engine.changes.modes import attributes_set, deterministic, prepared
from galleryvis.engine.changes.randomization import reinitialize
from galleryvis.engine.changes.rules import RELU_FAMILY, guided, output_rule, redirected_relus

__all__ = ["RELU_FAMILY", "Folding", "attributes_set", "capture", "conv_sizes", "counting", "deterministic",
           "first_calls", "forward_hooks", "guided", "hook_count", "output_rule", "prepared", "recorded",
           "redirected_relus", "reinitialize", "replaced_output", "resolve_layer", "running", "watch"]
