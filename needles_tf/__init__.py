"""needles_tf: classifying tiny objects in large images.

A TensorFlow/Keras testbed after "Needles in Haystacks: on classifying tiny objects in large
images": datasets whose object-to-image (O2I) ratio is controlled (nMNIST, nCAMELYON), BagNet
classifiers whose receptive field and capacity are controlled, four global poolings and the
paper's training protocol.
"""

__version__ = "0.1.0"

# Before anything imports TensorFlow: it reads the oneDNN variables once, when it starts.
from needles_tf.runtime import configure_onednn  # noqa: E402

ONEDNN_SETTING = configure_onednn()
