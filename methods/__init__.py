"""Methods for long-tailed generation: one small module per method, all in the METHODS registry.

To add a method: subclass :class:`methods.base.Method`, override the pieces it changes, give it an
``Options`` dataclass if it has options, decorate it with ``@METHODS.register("name")`` in a new module
and import that module below, or keep the module outside the package and load it with ``--plugin FILE``
(or the entry-point group ``ltgen_bench.methods``; see docs/own-method.md).
"""

from . import cbdm, cm, coral, ddpm, plugins, resample, reweight, t2h  # noqa: F401  (registration happens on import)
from .base import Labels, Method, ddpm_loss, mse_per_sample
from .cbdm import cbdm_loss
from .cm import cm_class_weights, cm_terms
from .coral import coral_lambda, coral_loss
from .registry import (
    METHODS,
    Composite,
    MethodSpec,
    fine_tuner,
    get_method,
    get_method_class,
    method_options,
    objective_class,
    resolve,
)
from .resample import resample_probs
from .reweight import class_weights
from .t2h import t2h_probs, t2h_targets

__all__ = [
    "METHODS", "Method", "Labels", "Composite", "get_method", "get_method_class", "ddpm_loss", "cbdm_loss", "mse_per_sample",
    "class_weights", "resample_probs", "t2h_probs", "t2h_targets", "coral_loss", "coral_lambda", "fine_tuner",
    "objective_class", "MethodSpec", "resolve", "method_options",
    "cm_class_weights", "cm_terms",
]
