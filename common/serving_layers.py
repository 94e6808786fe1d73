"""Preprocessing as Keras layers, and the serving model that puts them in front of a trained network.

A served or exported model takes the raw decoded film: grayscale, any size, `uint8`, `uint16` or
float (float films are taken as they are: in [0, 1], as `common.image_io.read_image` returns them).
`ServingModel` scales it to [0, 1] by its dtype, then runs the package's own preprocessing layers
(resize, equalisation, channels: each package lists them in `PKG/serving.py`) and the trained
network unchanged. The training graph is not touched: the export wraps it.

The layers run the same TensorFlow functions as the packages' `tf.data` pipelines
(`common.augment.resize`, `equalize_histogram`), so the wrapped model on a film equals the CLI's
`predict` on the same file.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from common.augment import equalize_histogram
from common.augment import resize
from common.augment import resize_keep_aspect

PACKAGE = "common"


def to_unit_range(image):
    """A raw film batch as float32 in [0, 1] with a channel axis: uint8 / 255, uint16 / 65535, float as is.

    Args:
        image: `(B, H, W)` or `(B, H, W, 1)` tensor, `uint8`, `uint16`, an integer or a float type.

    Returns:
        float32 `(B, H, W, 1)`.
    """
    image = tf.convert_to_tensor(image)
    dtype = image.dtype
    if dtype == tf.uint8:
        image = tf.cast(image, tf.float32) / 255.0
    elif dtype == tf.uint16:
        image = tf.cast(image, tf.float32) / 65535.0
    elif dtype.is_integer:
        image = tf.cast(image, tf.float32) / float(dtype.max)
    else:
        image = tf.cast(image, tf.float32)
    if image.shape.rank == 3:
        image = image[..., None]
    return image


@keras.saving.register_keras_serializable(PACKAGE)
class ResizeFilm(keras.layers.Layer):
    """Resizes a `(B, H, W, 1)` batch of any size to `size_hw` as the packages' pipelines do.

    Args:
        size_hw: `(height, width)` of the result.
        keep_aspect: fit and pad with zeros, centred (`common.augment.resize_keep_aspect`), or
            stretch (`common.augment.resize`, area averaging when shrinking).
    """

    def __init__(self, size_hw, keep_aspect=False, **kwargs):
        super().__init__(**kwargs)
        self.size_hw = tuple(int(v) for v in size_hw)
        self.keep_aspect = bool(keep_aspect)

    def call(self, images):
        images = tf.cast(images, tf.float32)
        if self.keep_aspect:
            return tf.map_fn(
                lambda one: resize_keep_aspect(one, self.size_hw),
                images,
                fn_output_signature=tf.TensorSpec([*self.size_hw, None], tf.float32),
            )
        return resize(images, self.size_hw)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.size_hw, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size_hw": self.size_hw, "keep_aspect": self.keep_aspect}


@keras.saving.register_keras_serializable(PACKAGE)
class EqualizeHistogram(keras.layers.Layer):
    """Histogram equalisation of each image of a batch (`common.augment.equalize_histogram`).

    Args:
        bins: gray levels of the histogram.
    """

    def __init__(self, bins=256, **kwargs):
        super().__init__(**kwargs)
        self.bins = int(bins)

    def call(self, images):
        images = tf.cast(images, tf.float32)
        return tf.map_fn(lambda one: equalize_histogram(one, self.bins), images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "bins": self.bins}


@keras.saving.register_keras_serializable(PACKAGE)
class RepeatChannels(keras.layers.Layer):
    """Gray repeated to `channels` (RGB trunks take three equal channels).

    Args:
        channels: channels of the result (1 leaves the batch as is).
    """

    def __init__(self, channels=1, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)

    def call(self, images):
        if self.channels == 1:
            return images
        return tf.repeat(images, self.channels, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(PACKAGE)
class ServingModel(keras.Model):
    """A trained network behind its preprocessing: raw films in, the network's outputs out.

    Inputs: a film batch (`(B, H, W)` or `(B, H, W, 1)`, uint8 / uint16 / float in [0, 1]), or a
    dict with `image` and the network's other inputs (e.g. boneage's `sex`, `(B, 1)` 1 = male).

    Args:
        network: the trained Keras model (unchanged).
        preprocessing: layers applied in order to the [0, 1] film batch.
        metadata: JSON-able dict carried in the model's config (the model card).
        film_channels: channels of the raw input (1 for a film; the slices of a volume).
    """

    def __init__(self, network, preprocessing=(), metadata=None, film_channels=1, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.film_channels = int(film_channels)
        self.preprocessing = list(preprocessing)
        self.metadata = dict(metadata or {})
        names = [t.name.split(":")[0] for t in network.inputs]
        self.image_input_name = "image" if "image" in names else names[0]
        self.extra_input_names = [n for n in names if n != self.image_input_name]
        self.network_takes_dict = len(network.inputs) > 1
        self.built = True  # the network is built; the preprocessing layers have no weights

    def preprocess(self, image):
        """The network's image input from a raw film batch."""
        image = to_unit_range(image)
        for layer in self.preprocessing:
            image = layer(image)
        return image

    def call(self, inputs, training=False):
        if isinstance(inputs, dict):
            image = inputs["image"]
            extras = {k: tf.cast(inputs[k], tf.float32) for k in self.extra_input_names}
        else:
            image, extras = inputs, {}
        missing = [k for k in self.extra_input_names if k not in extras]
        if missing:
            raise ValueError(f"the model needs the inputs {missing} besides the image")
        x = self.preprocess(image)
        if self.network_takes_dict:
            return self.network({self.image_input_name: x, **extras}, training=training)
        return self.network(x, training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "network": keras.saving.serialize_keras_object(self.network),
            "preprocessing": [keras.saving.serialize_keras_object(p) for p in self.preprocessing],
            "metadata": self.metadata,
            "film_channels": self.film_channels,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(
            config.pop("network"), custom_objects=custom_objects
        )
        preprocessing = [
            keras.saving.deserialize_keras_object(p, custom_objects=custom_objects)
            for p in config.pop("preprocessing", [])
        ]
        return cls(network, preprocessing, **config)


def film_signature(extra_inputs=(), dtype=tf.float32, channels=1):
    """The `tf.TensorSpec` input of a serving function: a film batch of any size, plus extras.

    Args:
        extra_inputs: names of `(B, 1)` float32 inputs besides the image.
        dtype: the film's dtype.
        channels: channels of the raw input (slices of a volume).

    Returns:
        A one-element list: a dict of specs when there are extras, else the image spec.
    """
    image = tf.TensorSpec([None, None, None, int(channels)], dtype, name="image")
    if not extra_inputs:
        return [image]
    specs = {"image": image}
    for name in extra_inputs:
        specs[name] = tf.TensorSpec([None, 1], tf.float32, name=name)
    return [specs]
