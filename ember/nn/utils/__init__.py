"""Utilities over modules and parameters."""

from .clip_grad import NonFiniteNormError, clip_grad_norm_, clip_grad_value_, clip_grads_with_norm_, get_total_norm

__all__ = ["NonFiniteNormError", "clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_", "get_total_norm"]
