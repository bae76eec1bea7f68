"""BagNet encoder: a ResNet-50 layout whose receptive field is set by how many 3x3 blocks it has.

Paper, section 2.2 and Table 3; after Brendel & Bethge 2019. Replacing the middle 3x3
convolution of a bottleneck by a 1x1 (with 2.5x the channels, to keep the parameter count)
stops that block from growing the receptive field, so the tuple `k3` -- how many leading blocks
of each stage use 3x3 -- sets the receptive field exactly.
"""

from typing import Sequence

import keras
from keras import layers

from needles_tf.models.normalization import InstanceNormalization

STAGE_BLOCKS = (3, 4, 6, 3)  # ResNet-50's, the paper's
STAGE_STRIDES = (2, 2, 2, 1)
STAGE_PLANES = (1, 2, 4, 8)
EXPANSION = 4
RF_PRESETS = {9: (1, 1, 0, 0), 33: (1, 1, 1, 1), 177: (3, 4, 6, 3)}
# Embedding location i is centred on input pixel EMBEDDING_OFFSET + EMBEDDING_STRIDE * i (rows and
# columns alike): the stem's unpadded 3x3 shifts centres by one pixel, every later convolution is
# padded symmetrically (centres stay) and the strided ones multiply positions.
EMBEDDING_STRIDE = 8  # the product of STAGE_STRIDES
EMBEDDING_OFFSET = 1


def check_blocks(blocks: Sequence[int]) -> tuple[int, ...]:
    """Validates the residual blocks per stage: four positive counts (ResNet-50: 3, 4, 6, 3)."""
    blocks = tuple(blocks)
    if len(blocks) != len(STAGE_BLOCKS) or not all(isinstance(n, int) and n >= 1
                                                  for n in blocks):
        raise ValueError(f"blocks must be four positive integers, blocks per stage "
                         f"(ResNet-50: {','.join(map(str, STAGE_BLOCKS))}); got {blocks}")
    return blocks


def check_k3(k3: Sequence[int], blocks: Sequence[int] = STAGE_BLOCKS) -> tuple[int, ...]:
    """Validates a 3x3-block tuple: four counts, each between 0 and its stage's block count."""
    k3, blocks = tuple(k3), check_blocks(blocks)
    if len(k3) != len(blocks) or not all(
        isinstance(n, int) and 0 <= n <= stage_blocks for n, stage_blocks in zip(k3, blocks)
    ):
        raise ValueError(
            f"k3 must be four integers, each between 0 and its stage's block count "
            f"{blocks}; got {k3}"
        )
    return k3


def resolve_k3(receptive_field: int | None = None,
               k3: Sequence[int] | None = None) -> tuple[int, ...]:
    """The 3x3-block tuple from either a receptive-field preset or an explicit tuple."""
    if (receptive_field is None) == (k3 is None):
        raise ValueError("give exactly one of receptive_field (9, 33, 177) or k3 (a 4-tuple)")
    if k3 is not None:
        return check_k3(k3)
    if receptive_field not in RF_PRESETS:
        raise ValueError(
            f"receptive_field must be one of {sorted(RF_PRESETS)} (or pass k3); "
            f"got {receptive_field!r}"
        )
    return RF_PRESETS[receptive_field]


def _block_kernels(k3: Sequence[int], blocks: Sequence[int] | None = None):
    """(stage, block, kernel, stride) for every bottleneck block, in order. Without `blocks`,
    the fewest blocks that hold `k3`: blocks past a stage's first that use 1x1 change neither
    the receptive field nor the output size, so that layout has the same of both."""
    k3 = check_k3(k3) if blocks is None else check_k3(k3, blocks)
    blocks = tuple(max(n3, 1) for n3 in k3) if blocks is None else blocks
    for stage, (n3, count, stride) in enumerate(zip(k3, blocks, STAGE_STRIDES)):
        for block in range(count):
            yield stage, block, 3 if block < n3 else 1, stride if block == 0 else 1


def receptive_field(k3: Sequence[int]) -> int:
    """Receptive field in input pixels of one embedding location (stem 3x3, then each 3x3 block)."""
    rf, jump = 3, 1  # after the stem: 1x1 then 3x3 convolution at stride 1
    for _, _, kernel, stride in _block_kernels(k3):
        rf += (kernel - 1) * jump
        jump *= stride
    return rf


def embedding_size(size: int) -> int:
    """Embedding locations along an input side of `size` pixels (any k3 and block counts).

    The stem's unpadded 3x3 takes two pixels; every later convolution is padded to keep the
    size, and each strided one (a padded 3x3 or a 1x1, alike) gives ceil(n / stride).
    """
    size -= 2
    for stride in STAGE_STRIDES:
        size = -(-size // stride) if size > 0 else 0
    return max(size, 0)


def min_input_size(k3: Sequence[int]) -> int:
    """Smallest input height / width that still gives a 1x1 embedding (any block counts)."""
    check_k3(k3)
    size = 1
    while embedding_size(size) < 1:
        size += 1
    return size


def _conv(filters: int, kernel: int, stride: int = 1, name: str | None = None) -> layers.Conv2D:
    """Convolution without bias, initialised N(0, sqrt(2 / (k * k * filters)))."""
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="valid",
        use_bias=False,
        kernel_initializer=keras.initializers.VarianceScaling(
            2.0, mode="fan_out", distribution="untruncated_normal"
        ),
        name=name,
    )


def _norm(normalization: bool, name: str):
    return InstanceNormalization(name=name) if normalization else layers.Identity(name=name)


def _padded_conv(x, filters: int, kernel: int, stride: int, name: str):
    """Convolution with padding (k - 1) // 2 on every side."""
    pad = (kernel - 1) // 2
    if pad:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return _conv(filters, kernel, stride, name=name)(x)


def bottleneck(x, planes: int, stride: int, kernel: int, normalization: bool, name: str):
    """1x1 -> k x k (stride) -> 1x1 (4 * planes), instance-normalised, with a residual path."""
    mid = planes if kernel == 3 else int(2.5 * planes)
    out = _conv(planes, 1, name=f"{name}_conv1")(x)
    out = layers.ReLU(name=f"{name}_relu1")(_norm(normalization, f"{name}_norm1")(out))
    out = _padded_conv(out, mid, kernel, stride, name=f"{name}_conv2")
    out = layers.ReLU(name=f"{name}_relu2")(_norm(normalization, f"{name}_norm2")(out))
    out = _conv(EXPANSION * planes, 1, name=f"{name}_conv3")(out)
    out = _norm(normalization, f"{name}_norm3")(out)

    shortcut = x
    if stride != 1 or x.shape[-1] != EXPANSION * planes:
        shortcut = _conv(EXPANSION * planes, 1, stride, name=f"{name}_down_conv")(x)
        # A strided 1x1 gives ceil(n / stride), as the padded k x k of the main path does, so
        # the two always match (tests/test_models.py checks every size up to 256).
        shortcut = _norm(normalization, f"{name}_down_norm")(shortcut)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([out, shortcut]))


def bagnet_encoder(inputs, k3: Sequence[int], width_scale: float = 1.0,
                   normalization: bool = True, blocks: Sequence[int] = STAGE_BLOCKS):
    """The topological embedding [B, h, w, 2048 * width_scale] of `inputs` [B, H, W, C].

    `blocks` (bottleneck blocks per stage) sets the depth: the paper's ResNet-50 layout by
    default; fewer blocks keep the receptive field (set by `k3`) at a fraction of the compute.
    """
    k3 = check_k3(k3, blocks)
    width = 64 * width_scale
    if width_scale <= 0 or abs(width - round(width)) > 1e-6 or round(width) < 1:
        raise ValueError(
            f"width_scale must be positive and give a whole channel count 64 * width_scale "
            f"(e.g. 1/16, 1/4, 1/2, 1, 2); got {width_scale!r}"
        )
    width = round(width)

    x = _conv(width, 1, name="stem_conv1")(inputs)
    x = _conv(width, 3, name="stem_conv2")(x)
    x = layers.ReLU(name="stem_relu")(_norm(normalization, "stem_norm")(x))
    for stage, block, kernel, stride in _block_kernels(k3, blocks):
        x = bottleneck(x, width * STAGE_PLANES[stage], stride, kernel, normalization,
                       name=f"stage{stage + 1}_block{block + 1}")
    return layers.Identity(name="embedding")(x)
