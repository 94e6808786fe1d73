"""The trainable attention module of the knee-OA paper (000 §3.1), reused by the RA paper (001 §3.2.1)."""

from __future__ import annotations

import keras
from keras import layers
from keras import ops

from common.layers.locally_connected2d import LocallyConnected2D


@keras.saving.register_keras_serializable(package="common")
class AttentionBranch(layers.Layer):
    """Attention module: a learned spatial mask over a feature map and the masked average of the map.

    Given a feature volume D (H x W x N): batch normalisation, a stack of 1x1 convolutions (ReLU),
    then a 1x1 `LocallyConnected2D` with a sigmoid gives the mask A (H x W x 1). The (normalised)
    features are multiplied by A and globally average-pooled, and the pooled vector is divided by the
    mean of A (the "masked GAP" of the paper), so a small but confident mask is not penalised.
    As in Mader's bone-age kernel the paper builds on, the mask multiplies the batch-normalised
    features.

    Args:
        filters: tuple of ints, the 1x1 convolution widths before the mask. Defaults to `(64, 16)`.
        dropout: float in [0, 1), dropout after each 1x1 convolution. Defaults to `0.0`.
        epsilon: float, guards the division by the mask's mean. Defaults to `1e-6`.

    Input shape:
        `(batch, H, W, N)`; H and W must be known (the locally connected layer has one weight per
        position).

    Output shape:
        A tuple `(features, mask)`: `features` `(batch, N)` and `mask` `(batch, H, W, 1)` in [0, 1].

    Reference:
        Górriz et al., "Assessing knee OA severity with CNN attention-based end-to-end architectures",
        MIDL 2019, §3.1 and Fig. 1.
    """

    def __init__(self, filters=(64, 16), dropout=0.0, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.filters = tuple(int(f) for f in filters)
        if not self.filters or min(self.filters) <= 0:
            raise ValueError(
                f"`filters` must be a non-empty tuple of positive ints. Received: {filters}"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: {dropout}")
        self.dropout = float(dropout)
        self.epsilon = float(epsilon)
        prefix = self.name
        self.batch_norm = layers.BatchNormalization(name=f"{prefix}_bn")
        self.convs = [
            layers.Conv2D(f, 1, padding="same", activation="relu", name=f"{prefix}_conv{i}")
            for i, f in enumerate(self.filters)
        ]
        self.dropouts = [
            layers.Dropout(self.dropout, name=f"{prefix}_dropout{i}")
            for i in range(len(self.filters))
        ]
        self.mask_layer = LocallyConnected2D(1, 1, activation="sigmoid", name=f"{prefix}_mask")

    def build(self, input_shape):
        if input_shape[1] is None or input_shape[2] is None:
            raise ValueError(
                f"AttentionBranch needs a known spatial size. Received input_shape={input_shape}"
            )
        self.batch_norm.build(input_shape)
        shape = tuple(input_shape)
        for conv in self.convs:
            conv.build(shape)
            shape = shape[:3] + (conv.filters,)
        self.mask_layer.build(shape)

    def call(self, inputs, training=None):
        features = self.batch_norm(inputs, training=training)
        x = features
        for conv, drop in zip(self.convs, self.dropouts):
            x = conv(x)
            if self.dropout:
                x = drop(x, training=training)
        mask = self.mask_layer(x)
        masked = features * mask
        pooled = ops.mean(masked, axis=(1, 2)) / (ops.mean(mask, axis=(1, 2)) + self.epsilon)
        return pooled, mask

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[3]), tuple(input_shape[:3]) + (1,)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "dropout": self.dropout,
            "epsilon": self.epsilon,
        }
