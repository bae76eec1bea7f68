"""Rematerialisation (gradient checkpointing): train on images too large for the activations.

Training keeps every activation of the forward pass for the backward pass; at 512 x 512 and
capacity 1 that is most of the step's memory. `rematerialised` returns a training twin of a
classifier that shares its layers and weights but keeps only the activations between segments
(the stem and each block, or each stage) and recomputes a segment's inside during the backward
pass: less memory for one more forward pass per step. The twin is what `fit` trains; the
classifier itself is what is saved, so files and checkpoints keep their layout whatever the
setting, and a run may change it on a resume.
"""

import math

import keras

REMAT_MODES = ("none", "stage", "block")


@keras.saving.register_keras_serializable(package="needles_tf")
class Rematerialised(keras.layers.Layer):
    """Runs `segment` (a model) under `keras.remat`: its activations are recomputed for the
    backward pass rather than kept."""

    def __init__(self, segment: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.segment = segment

    def call(self, x):
        return keras.remat(self.segment)(x)

    def compute_output_shape(self, input_shape):
        return self.segment.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(),
                "segment": keras.saving.serialize_keras_object(self.segment)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["segment"] = keras.saving.deserialize_keras_object(config["segment"])
        return cls(**config)


def _check_mode(mode: str) -> None:
    if mode not in REMAT_MODES:
        raise ValueError(f"remat must be one of {', '.join(REMAT_MODES)}; got {mode!r}")


def _segment_ends(model: keras.Model, mode: str) -> list[tuple[str, object]]:
    """(name, output tensor) of each segment, in order: the stem, then each block or stage.

    Blocks are found by the encoder's layer names: block `stageS_blockB` starts at its
    `_conv1` and ends at its `_out` layer (models/bagnet.py).
    """
    blocks = [layer.name[:-len("_out")] for layer in model.layers
              if layer.name.startswith("stage") and layer.name.endswith("_out")]
    if not blocks:
        raise ValueError(f"{model.name}: no BagNet blocks (layers stageS_blockB_out) to "
                         "rematerialise")
    ends = [("stem", model.get_layer(f"{blocks[0]}_conv1").input)]
    for i, block in enumerate(blocks):
        stage = block.split("_")[0]
        last_of_stage = i + 1 == len(blocks) or not blocks[i + 1].startswith(stage + "_")
        if mode == "block" or last_of_stage:
            ends.append((block if mode == "block" else stage,
                         model.get_layer(f"{block}_out").output))
    return ends


def rematerialised(model: keras.Model, mode: str) -> keras.Model:
    """A training twin of the BagNet classifier `model` that recomputes activations.

    Args:
      model: a classifier of `build_classifier` (a functional model).
      mode: "none" (returns `model` itself), "block" (keeps the input of every bottleneck block:
        least memory) or "stage" (keeps the input of every stage: fewer kept tensors, but a
        whole stage is recomputed at once).

    Returns:
      A model with the same weights (the same variables, in the same order), the same outputs
      and the same gradients.

    Raises:
      ValueError: for another mode, or a model without BagNet blocks.
    """
    _check_mode(mode)
    if mode == "none":
        return model
    x = inputs = keras.Input(shape=model.input_shape[1:], dtype=model.inputs[0].dtype,
                             name="images")
    start = model.inputs[0]
    for name, end in _segment_ends(model, mode):
        x = Rematerialised(keras.Model(start, end, name=name), name=f"{name}_remat")(x)
        start = end
    outputs = keras.Model(start, model.outputs[0], name="head")(x)
    return keras.Model(inputs, outputs, name=f"{model.name}_remat_{mode}")


def kept_activations(model: keras.Model, height: int, width: int, mode: str) -> int:
    """Activation values per image that a training step holds at its peak (an upper bound).

    Without rematerialisation every layer's output may be kept for the backward pass; with it,
    the segments' inputs, and the outputs of the one segment being recomputed (the largest).
    The runtime frees part of this: training/memory.py calibrates it against measurements.
    """
    _check_mode(mode)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    ends = [] if mode == "none" else _segment_ends(model, mode)
    probe = keras.Model(model.inputs[0], [layer.output for layer in layers] +
                        [end for _, end in ends])
    shapes = probe.compute_output_shape((1, height, width, model.input_shape[-1]))
    sizes = [math.prod(shape[1:]) for shape in shapes]
    if mode == "none":
        return sum(sizes)
    segments: dict[str, int] = {}
    for layer, size in zip(layers, sizes):
        parts = layer.name.split("_")
        if not layer.name.startswith("stage"):
            key = "stem" if layer.name.startswith("stem") else "head"
        else:
            key = "_".join(parts[:2]) if mode == "block" else parts[0]
        segments[key] = segments.get(key, 0) + size
    return sum(sizes[len(layers):]) + max(segments.values())
