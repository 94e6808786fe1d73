"""Locally connected 2-D layer (a convolution with unshared weights) for Keras 3."""

from __future__ import annotations

import keras
from keras import activations
from keras import constraints
from keras import initializers
from keras import layers
from keras import ops
from keras import regularizers


def _pair(value, name):
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"`{name}` must be an int or a pair of ints. Received: {value}")
    return value


@keras.saving.register_keras_serializable(package="common")
class LocallyConnected2D(layers.Layer):
    """Locally connected 2-D layer: like `Conv2D`, but every output position has its own kernel.

    Keras 3 dropped `LocallyConnected2D`; this layer reproduces `tf_keras.layers.LocallyConnected2D`
    with `implementation=1` (same maths, same weight shapes), so
    `layer.set_weights(tf_keras_layer.get_weights())` carries trained weights over. Only
    `padding="valid"` and `data_format="channels_last"` exist, as in the original for most uses.

    The 1x1 case (used by the attention modules of the knee and RA papers) runs as one broadcasted
    multiply-and-sum instead of a patch extraction, which is what makes it fast.

    Args:
        filters: int, number of output channels.
        kernel_size: int or pair `(kh, kw)`, the window of each output position.
        strides: int or pair, step between windows. Defaults to `(1, 1)`.
        padding: only `"valid"`.
        data_format: only `"channels_last"` (or `None`).
        activation: activation applied to the output, e.g. `"sigmoid"` for an attention mask.
        use_bias: whether each output position and filter has its own bias.
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        activity_regularizer, kernel_constraint, bias_constraint: as in `Conv2D`.

    Input shape:
        `(batch, rows, cols, channels)` with `rows` and `cols` known when the layer is built.

    Output shape:
        `(batch, out_rows, out_cols, filters)` with `out_rows = (rows - kh) // sr + 1` (same for cols).

    Weights:
        kernel `(out_rows * out_cols, kh * kw * channels, filters)`; bias `(out_rows, out_cols, filters)`.

    Reference:
        Chen et al., "Locally-connected and convolutional neural networks for small footprint speaker
        recognition", Interspeech 2015; used as the 1x1 attention layer in Górriz et al., MIDL 2019 §3.1.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        data_format=None,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.filters = int(filters)
        if self.filters <= 0:
            raise ValueError(f"`filters` must be positive. Received: {filters}")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        if str(padding).lower() != "valid":
            raise ValueError(f"Only padding='valid' is supported. Received: padding={padding!r}")
        self.padding = "valid"
        if data_format not in (None, "channels_last"):
            raise ValueError(
                f"Only data_format='channels_last' is supported. Received: {data_format!r}"
            )
        self.data_format = "channels_last"
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.input_spec = layers.InputSpec(ndim=4)

    def _output_hw(self, rows, cols):
        kh, kw = self.kernel_size
        sr, sc = self.strides
        return (rows - kh) // sr + 1, (cols - kw) // sc + 1

    def build(self, input_shape):
        _, rows, cols, channels = input_shape
        if rows is None or cols is None or channels is None:
            raise ValueError(
                "LocallyConnected2D needs fully defined rows, cols and channels. "
                f"Received input_shape={input_shape}"
            )
        out_rows, out_cols = self._output_hw(rows, cols)
        if out_rows <= 0 or out_cols <= 0:
            raise ValueError(
                f"Kernel {self.kernel_size} does not fit the input {rows}x{cols}. "
                f"Received input_shape={input_shape}"
            )
        self.input_rows, self.input_cols, self.input_channels = int(rows), int(cols), int(channels)
        self.output_rows, self.output_cols = out_rows, out_cols
        kh, kw = self.kernel_size
        self.kernel = self.add_weight(
            name="kernel",
            shape=(out_rows * out_cols, kh * kw * channels, self.filters),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(out_rows, out_cols, self.filters),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        else:
            self.bias = None
        self.input_spec = layers.InputSpec(ndim=4, axes={1: rows, 2: cols, 3: channels})

    def _patches(self, inputs):
        """(B, out_rows * out_cols, kh * kw * C), positions row-major, features ordered (kh, kw, C)."""
        kh, kw = self.kernel_size
        patches = ops.image.extract_patches(
            inputs,
            size=(kh, kw),
            strides=self.strides,
            padding="valid",
            data_format="channels_last",
        )
        return ops.reshape(
            patches, (-1, self.output_rows * self.output_cols, kh * kw * self.input_channels)
        )

    def call(self, inputs):
        positions = self.output_rows * self.output_cols
        if self.kernel_size == (1, 1):
            sr, sc = self.strides
            if (sr, sc) != (1, 1):
                inputs = inputs[:, ::sr, ::sc, :]
            # (B, P, C) against (P, C, F): one broadcasted multiply-add, no patch extraction
            flat = ops.reshape(inputs, (-1, positions, self.input_channels))
            if self.filters == 1:
                kernel = ops.reshape(self.kernel, (1, positions, self.input_channels))
                outputs = ops.expand_dims(ops.sum(flat * kernel, axis=-1), -1)
            else:
                outputs = ops.einsum("bpc,pcf->bpf", flat, self.kernel)
        else:
            outputs = ops.einsum("bpk,pkf->bpf", self._patches(inputs), self.kernel)
        if self.use_bias:
            outputs = outputs + ops.reshape(self.bias, (1, positions, self.filters))
        outputs = ops.reshape(outputs, (-1, self.output_rows, self.output_cols, self.filters))
        return self.activation(outputs)

    def compute_output_shape(self, input_shape):
        out_rows, out_cols = self._output_hw(input_shape[1], input_shape[2])
        return (input_shape[0], out_rows, out_cols, self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": self.data_format,
            "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": constraints.serialize(self.kernel_constraint),
            "bias_constraint": constraints.serialize(self.bias_constraint),
        }
