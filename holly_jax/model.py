"""The HOLLy pose network (docs/method.md §2) as a Flax linen module.

Ten convolutions with BatchNorm and leaky ReLU, a dense layer of 256 and a
linear output read by the pose heads. The flatten size follows from the input
size (6400 at 128x128), so any H x W works.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from holly_jax import rotations

# name, out channels, kernel, stride, padding (PyTorch-style symmetric padding)
LAYERS = (
    ("conv1", 16, 5, 2, 2),
    ("conv2", 32, 3, 1, 1),
    ("conv2b", 32, 2, 2, 1),
    ("conv3", 64, 3, 1, 1),
    ("conv3b", 64, 2, 2, 1),
    ("conv4", 128, 3, 1, 1),
    ("conv4b", 128, 2, 2, 1),
    ("conv5", 256, 3, 1, 1),
    ("conv5b", 256, 2, 2, 1),
    ("conv6", 256, 3, 1, 1),
)
ROTATION_HEADS = {"axis_angle": 3, "6d": 6}
SIGMA_CLAMP = 14.0
_BIAS_INIT = 1e-4  # the original starts biases at a tiny constant


class Pose(NamedTuple):
    """Network output for a batch: rotation matrices, raw rotation output, translations, sigmas (or None)."""

    R_Bx3x3: jax.Array
    rotation_raw: jax.Array  # B x 3 axis-angle or B x 6 (6D representation)
    t_Bx2: jax.Array
    sigma_B: jax.Array | None


def spatial_size(size: int) -> int:
    """Side length after the convolution stack, for one input side length."""
    for _, _, k, s, p in LAYERS:
        size = (size + 2 * p - k) // s + 1
    return size


class HollyNet(nn.Module):
    """Image B x H x W -> Pose. ``predict_sigma`` adds the softplus-clamped sigma head.

    With ``num_heads`` K > 1 the last layer gives K pose hypotheses per image and every field of the
    Pose gains an axis after the batch (B x K x ...); K = 1 is the original network.
    """

    predict_sigma: bool = True
    rotation: str = "axis_angle"
    max_trans: float = 0.1
    dtype: Any = jnp.float32  # compute dtype of the convolutions and dense layers
    num_heads: int = 1

    @nn.compact
    def __call__(self, images_BxHxW: jax.Array, train: bool) -> Pose:
        if self.rotation not in ROTATION_HEADS:
            raise ValueError(f"unknown rotation head {self.rotation!r}; expected one of {tuple(ROTATION_HEADS)}")
        x = images_BxHxW[..., None].astype(self.dtype)
        for name, channels, k, s, p in LAYERS:
            x = nn.Conv(
                channels,
                (k, k),
                strides=s,
                padding=((p, p), (p, p)),
                dtype=self.dtype,
                kernel_init=nn.initializers.xavier_uniform(),
                bias_init=nn.initializers.constant(_BIAS_INIT),
                name=name,
            )(x)
            # PyTorch BatchNorm defaults: momentum 0.1 (Flax's 0.9), eps 1e-5.
            x = nn.BatchNorm(
                use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name=f"{name}_bn"
            )(x)
            x = nn.leaky_relu(x, 0.01)
        x = x.reshape(x.shape[0], -1)
        x = nn.leaky_relu(
            nn.Dense(
                256,
                dtype=self.dtype,
                kernel_init=nn.initializers.xavier_uniform(),
                bias_init=nn.initializers.constant(_BIAS_INIT),
                name="fc1",
            )(x),
            0.01,
        )
        n_rot = ROTATION_HEADS[self.rotation]
        n_out = n_rot + 2 + int(self.predict_sigma)
        out = nn.Dense(
            n_out * self.num_heads,
            dtype=jnp.float32,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.constant(_BIAS_INIT),
            name="fc2",
        )(x).astype(jnp.float32)
        if self.num_heads == 1:
            return decode_heads(out, self.rotation, self.max_trans, self.predict_sigma)
        out = out.reshape(out.shape[0], self.num_heads, n_out)  # head k reads columns k*n_out ... (k+1)*n_out-1
        return jax.vmap(decode_heads, in_axes=(1, None, None, None), out_axes=1)(
            out, self.rotation, self.max_trans, self.predict_sigma
        )


def decode_heads(out_BxK: jax.Array, rotation: str, max_trans: float, predict_sigma: bool) -> Pose:
    """Map the raw network output to a pose (docs/method.md §2 heads)."""
    n_rot = ROTATION_HEADS[rotation]
    raw = out_BxK[:, :n_rot]
    to_matrix = rotations.axis_angle_to_matrix if rotation == "axis_angle" else rotations.sixd_to_matrix
    R_Bx3x3 = jax.vmap(to_matrix)(raw)
    t_Bx2 = jnp.tanh(out_BxK[:, n_rot : n_rot + 2]) * 2.0 * max_trans
    sigma_B = jnp.minimum(jax.nn.softplus(out_BxK[:, n_rot + 2]), SIGMA_CLAMP) if predict_sigma else None
    return Pose(R_Bx3x3, raw, t_Bx2, sigma_B)
