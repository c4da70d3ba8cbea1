"""The two parameterised building blocks: a bias-free linear map and RMSNorm.

Parameters are float32; the computation runs in the input's dtype (bfloat16 on accelerators),
except RMSNorm, which normalises in float32 and casts the result back. Module names ("linear",
"rms_norm") are haiku's defaults for these class names, as in the reference parameter tree.
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp

RMS_NORM_EPS = 1e-5


class Linear(hk.Module):
    """y = x @ w, w float32 [D_in, D_out], no bias (no layer of this model has one)."""

    def __init__(self, output_size: int, name: str | None = None):
        super().__init__(name=name)
        self.output_size = output_size

    def __call__(self, x: jax.Array) -> jax.Array:
        init = hk.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal")
        w = hk.get_parameter("w", [x.shape[-1], self.output_size], jnp.float32, init=init)
        return jnp.dot(x, w.astype(x.dtype))


class RMSNorm(hk.Module):
    """x / sqrt(mean(x**2) + eps) * scale over the last axis, in float32; scale float32 [D]."""

    def __init__(self, eps: float = RMS_NORM_EPS, name: str | None = None):
        super().__init__(name=name)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = hk.get_parameter("scale", [x.shape[-1]], jnp.float32, init=jnp.ones)
        return rms_norm(x, scale, self.eps)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float = RMS_NORM_EPS) -> jax.Array:
    """Pure RMSNorm: float32 math, result in x's dtype. x [..., D], scale [D]."""
    x32 = x.astype(jnp.float32)
    mean_square = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    return (scale.astype(jnp.float32) * (x32 * jax.lax.rsqrt(mean_square + eps))).astype(x.dtype)
