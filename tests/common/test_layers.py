"""`LocallyConnected2D` equals tf_keras' on copied weights; `AttentionBranch` does the paper's masked GAP."""

import keras
import numpy as np
import pytest
import tf_keras

from common.layers import AttentionBranch
from common.layers import LocallyConnected2D
from common.testing import TestCase

LC_CASES = [
    # (kernel, strides, input (H, W, C), filters)
    (1, 1, (9, 7, 16), 1),
    (1, 1, (6, 5, 3), 4),
    (1, 2, (9, 7, 8), 2),
    (3, 1, (8, 6, 4), 5),
    (3, 2, (9, 11, 3), 2),
    ((2, 3), (2, 1), (7, 9, 5), 3),
]


class TestLocallyConnected2D(TestCase):
    @pytest.mark.parametrize("kernel, strides, shape, filters", LC_CASES)
    def test_equals_tf_keras_on_copied_weights(self, kernel, strides, shape, filters):
        x = np.random.default_rng(0).normal(size=(3, *shape)).astype("float32")
        reference = tf_keras.layers.LocallyConnected2D(
            filters,
            kernel,
            strides=strides,
            implementation=1,
            bias_initializer="random_normal",
            activation="sigmoid",
        )
        expected = reference(x).numpy()
        ours = LocallyConnected2D(filters, kernel, strides=strides, activation="sigmoid")
        ours.build(x.shape)
        assert [w.shape for w in ours.get_weights()] == [w.shape for w in reference.get_weights()]
        ours.set_weights(reference.get_weights())
        np.testing.assert_allclose(np.asarray(ours(x)), expected, atol=1e-5)

    @pytest.mark.parametrize("kernel, strides, shape, filters", LC_CASES[:4])
    def test_layer_contract(self, kernel, strides, shape, filters):
        layer = self.run_layer_test(
            LocallyConnected2D,
            {"filters": filters, "kernel_size": kernel, "strides": strides, "use_bias": True},
            (2, *shape),
            expected_num_trainable_weights=2,
        )
        out_rows = (shape[0] - (kernel if isinstance(kernel, int) else kernel[0])) // (
            strides if isinstance(strides, int) else strides[0]
        ) + 1
        assert layer.output_rows == out_rows

    def test_weights_are_unshared(self):
        layer = LocallyConnected2D(1, 1, use_bias=False)
        layer.build((1, 2, 2, 1))
        layer.set_weights([np.array([1.0, 2.0, 3.0, 4.0], "float32").reshape(4, 1, 1)])
        out = np.asarray(layer(np.ones((1, 2, 2, 1), "float32")))[0, :, :, 0]
        np.testing.assert_array_equal(out, [[1.0, 2.0], [3.0, 4.0]])

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"filters": 1, "kernel_size": 1, "padding": "same"}, "valid"),
            ({"filters": 0, "kernel_size": 1}, "positive"),
            ({"filters": 1, "kernel_size": 1, "data_format": "channels_first"}, "channels_last"),
        ],
    )
    def test_bad_arguments(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            LocallyConnected2D(**kwargs)

    def test_kernel_larger_than_input(self):
        with pytest.raises(ValueError, match="does not fit"):
            LocallyConnected2D(1, 5).build((1, 3, 3, 1))

    def test_saving_in_fresh_process(self, tmp_path):
        inputs = keras.Input((6, 5, 3))
        outputs = LocallyConnected2D(2, 3, strides=2, activation="relu", name="lc")(inputs)
        model = keras.Model(inputs, outputs)
        x = np.random.default_rng(1).normal(size=(2, 6, 5, 3)).astype("float32")
        self.run_model_saving_test(model, x, tmp_path, fresh_process_import="common")


class TestAttentionBranch(TestCase):
    def test_layer_contract(self):
        self.run_layer_test(
            AttentionBranch,
            {"filters": (8, 4), "name": "att0"},
            (2, 6, 5, 12),
            expected_output_shape=((2, 12), (2, 6, 5, 1)),
            # bn gamma/beta, 2 convs x (kernel, bias), lc kernel + bias
            expected_num_trainable_weights=8,
        )

    def test_masked_gap_is_gap_of_masked_features_over_mean_mask(self):
        layer = AttentionBranch(filters=(4,), name="att")
        x = np.random.default_rng(2).normal(size=(2, 5, 4, 3)).astype("float32")
        pooled, mask = layer(x, training=False)
        features = np.asarray(layer.batch_norm(x, training=False))
        mask = np.asarray(mask)
        expected = (features * mask).mean(axis=(1, 2)) / (mask.mean(axis=(1, 2)) + layer.epsilon)
        np.testing.assert_allclose(np.asarray(pooled), expected, rtol=1e-5, atol=1e-6)
        assert mask.min() >= 0 and mask.max() <= 1

    def test_default_filters_follow_the_paper(self):
        # paper 000 §3.1 / Mader's kernel: 1x1 convolutions of 64 then 16 filters before the mask
        layer = AttentionBranch()
        layer.build((None, 40, 28, 256))
        assert [c.filters for c in layer.convs] == [64, 16]
        assert layer.mask_layer.kernel.shape == (40 * 28, 16, 1)

    def test_unknown_spatial_size_rejected(self):
        with pytest.raises(ValueError, match="spatial"):
            AttentionBranch().build((None, None, None, 8))

    def test_saving_in_fresh_process(self, tmp_path):
        inputs = keras.Input((6, 5, 4))
        pooled, mask = AttentionBranch(filters=(4, 2), name="att0")(inputs)
        model = keras.Model(
            inputs, {"pooled": pooled, "mask": keras.layers.Identity(name="mask")(mask)}
        )
        x = np.random.default_rng(3).normal(size=(2, 6, 5, 4)).astype("float32")
        self.run_model_saving_test(model, x, tmp_path, fresh_process_import="common")
