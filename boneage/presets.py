"""Presets of BoneAgeNet: plain values, no Keras (keras-hub's `*_presets.py` shape).

`PRESETS` maps a name to a `BoneAgeConfig`: every row of the paper's Table 1 (`baseline`,
`modified_1`..`modified_6`, `final_no_fc`, `final_no_fc_no_sex`, `paper` = Final) and `demo`.
`BoneAgeConfig` is the presets' schema, a frozen dataclass of plain values with its range checks
(`validate`); `boneage.model` builds and counts a configuration. Importing this module imports
nothing but the standard library, so `python -m boneage --help` lists the presets without
TensorFlow or Keras.

Reference:
    J. Ma, "Designing a Bone Age Estimation CNN-Model using Hyperparameter Optimization",
    Human Data Analytics 2020-2021 (paper 003), §III, §V, §VI, Table 1.
"""

from __future__ import annotations

import dataclasses

# Table 1 of the paper: (β, n.Mixed5, n.Mixed7, n.Mixed9), and the two head variants.
PAPER_INPUT_HW = (300, 300)
PAPER_TRAINING = {
    "loss": "mse",
    "optimizer": "adam",
    "learning_rate": 1e-2,
    "min_learning_rate": 1e-5,
    "batch_size": 32,
    "epochs": 100,
}


@dataclasses.dataclass(frozen=True)
class BoneAgeConfig:
    """Configuration of a BoneAgeNet model (one Table 1 row, or the demo).

    Args:
        image_size_hw: input image height and width in pixels (paper: 300 x 300, §III).
        channels: image channels (1: grayscale radiographs; 3 reproduces Keras' InceptionV3).
        width_factor: β, multiplies every convolution's filters (rounded half up), > 0.
        num_mixed5: repeats of the 17x17 block with 160-filter 7x7 branches (Keras: 2).
        num_mixed7: repeats of the 17x17 block with 192-filter 7x7 branches (Keras: 1).
        num_mixed9: repeats of the 8x8 block (Keras: 2).
        use_sex: whether the model has the `sex` input (1 = male, 0 = female).
        sex_units: units of the dense layer the sex input goes through.
        hidden_units: units of the hidden dense layer after the concatenation; 0 = none.
        dropout_rate: dropout after GAP, in [0, 1); 0 = none.
        l2: α, the L2 coefficient on the output layer's kernel.
        output_bias_months: initial bias of the output unit (a typical age, so training starts
            near the mean instead of at 0 months).
        batchnorm_momentum: momentum of the BatchNormalization moving statistics (Keras'
            InceptionV3: 0.99; the demo uses 0.5 so that they follow its fast-changing weights
            within a few hundred steps, or a few dozen in the tests).
        stem_pool1: keep the stem's first max pooling (True, Keras' InceptionV3 and every paper
            preset). False drops it, so every later feature map has about twice the height and
            width: the last block is 10 x 8 instead of 4 x 3 at 192 x 160, which gives the class
            activation maps (§VI) a usable resolution on small demo inputs. It has no weights, so
            the parameter count is unchanged.
        learning_rate: Adam's initial learning rate (§V: 1e-2).
        min_learning_rate: floor of the stepwise decay (§V: 1e-5).
        lr_decay_factor: the stepwise decay multiplies the rate by this ...
        lr_decay_epochs: ... every this many epochs (the paper gives no steps; 0.5 every 10
            epochs takes 1e-2 to 2e-5 by epoch 90, at the paper's 1e-5 floor after 100).
        batch_size: examples per step (§V: 32).
        epochs: training epochs (§VI: 100).
        description: one line on what the preset is.
    """

    image_size_hw: tuple = PAPER_INPUT_HW
    channels: int = 1
    width_factor: float = 1.0
    num_mixed5: int = 2
    num_mixed7: int = 1
    num_mixed9: int = 2
    use_sex: bool = True
    sex_units: int = 32
    hidden_units: int = 0
    dropout_rate: float = 0.0
    l2: float = 1e-4
    output_bias_months: float = 127.0
    batchnorm_momentum: float = 0.99
    stem_pool1: bool = True
    learning_rate: float = 1e-2
    min_learning_rate: float = 1e-5
    lr_decay_factor: float = 0.5
    lr_decay_epochs: int = 10
    batch_size: int = 32
    epochs: int = 100
    description: str = ""

    def validate(self):
        """Raises ValueError (Keras style) for an impossible configuration; returns self."""
        height, width = (int(v) for v in self.image_size_hw)
        if min(height, width) < 75:
            raise ValueError(
                f"image_size_hw must be at least (75, 75) for InceptionV3; received {self.image_size_hw}"
            )
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1; received {self.channels}")
        if not self.width_factor > 0:
            raise ValueError(f"width_factor must be > 0; received {self.width_factor}")
        for key in ("num_mixed5", "num_mixed7", "num_mixed9"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1; received {getattr(self, key)}")
        if self.use_sex and self.sex_units < 1:
            raise ValueError(f"sex_units must be >= 1 when use_sex; received {self.sex_units}")
        if self.hidden_units < 0:
            raise ValueError(f"hidden_units must be >= 0; received {self.hidden_units}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1); received {self.dropout_rate}")
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0; received {self.l2}")
        if not 0 < self.min_learning_rate <= self.learning_rate:
            raise ValueError(
                "learning rates must satisfy 0 < min_learning_rate <= learning_rate; received "
                f"{self.min_learning_rate}, {self.learning_rate}"
            )
        if not 0 < self.lr_decay_factor <= 1 or self.lr_decay_epochs < 1:
            raise ValueError("lr_decay_factor must be in (0, 1] and lr_decay_epochs >= 1")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError(
                f"batch_size and epochs must be >= 1; received {self.batch_size}, {self.epochs}"
            )
        if not 0.0 <= self.batchnorm_momentum < 1.0:
            raise ValueError(
                f"batchnorm_momentum must be in [0, 1); received {self.batchnorm_momentum}"
            )
        return self

    def to_dict(self):
        """Returns the configuration as a plain JSON-ready dict."""
        out = dataclasses.asdict(self)
        out["image_size_hw"] = list(self.image_size_hw)
        return out


def _row(description, beta, n5, n7, n9, **head):
    return BoneAgeConfig(
        width_factor=beta,
        num_mixed5=n5,
        num_mixed7=n7,
        num_mixed9=n9,
        description=f"Table 1, {description}: β {beta}, Mixed5/7/9 x {n5}/{n7}/{n9}.",
        **head,
    )


_FINAL_HEAD = {"hidden_units": 2867, "dropout_rate": 0.5}

PRESETS = {
    # Table 1 of the paper, row by row (β, n.Mixed5, n.Mixed7, n.Mixed9).
    "baseline": _row("Baseline (BoneAgeInception), no hidden layer, ~28M", 1.0, 2, 1, 2),
    "modified_1": _row("Modified 1, ~36M", 1.2, 4, 1, 2),
    "modified_2": _row("Modified 2, ~55M", 1.3, 5, 1, 3),
    "modified_3": _row("Modified 3 (the CAMs of Fig. 4), ~51M", 1.2, 4, 3, 3),
    "modified_4": _row("Modified 4, ~47M", 1.0, 6, 4, 4),
    "modified_5": _row("Modified 5, ~65M", 1.2, 5, 4, 4),
    "modified_6": _row("Modified 6, ~66M", 1.1, 6, 5, 5),
    "final_no_fc": _row(
        "Final without the hidden layer, dropout 0.5, ~69M", 1.4, 4, 3, 3, dropout_rate=0.5
    ),
    "final_no_fc_no_sex": _row(
        "Final without the hidden layer and without the sex input, ~69M",
        1.4,
        4,
        3,
        3,
        dropout_rate=0.5,
        use_sex=False,
    ),
    "paper": _row(
        "Final (BoneAgeNet): dropout 0.5 after GAP, hidden layer of 2867, ~78M; test MAE 5.6 months",
        1.4,
        4,
        3,
        3,
        **_FINAL_HEAD,
    ),
    # Small enough to learn the phantoms on a 2-core CPU in a few minutes.
    "demo": BoneAgeConfig(
        image_size_hw=(192, 160),
        width_factor=0.14,
        num_mixed5=1,
        num_mixed7=1,
        num_mixed9=1,
        stem_pool1=False,
        sex_units=8,
        hidden_units=32,
        dropout_rate=0.1,
        batchnorm_momentum=0.5,
        learning_rate=3e-3,
        lr_decay_factor=0.5,
        lr_decay_epochs=4,
        epochs=10,
        description="Demo: the paper's architecture at 192 x 160 without the stem's first max "
        "pooling (a 10 x 8 last block, so the CAMs resolve the hand), β 0.14, Mixed5/7/9 x "
        "1/1/1, hidden layer of 32 (0.3M parameters); learns the phantoms on a 2-core CPU in "
        "minutes.",
    ),
}

# The training schedule as `common.callbacks.callback_preset` builds it (its fields), from the
# `paper` preset above. `boneage.train` passes the chosen preset's values over these.
CALLBACK_PRESETS = {
    "boneage": {
        "step_every": PRESETS["paper"].lr_decay_epochs,
        "step_factor": PRESETS["paper"].lr_decay_factor,
        "min_lr": PRESETS["paper"].min_learning_rate,
        "reference": "paper 003 §V: Adam 1e-2 with stepwise decay to a floor of 1e-5 "
        "(step not given: x0.5/10 epochs)",
    },
}
