"""Dataset generation: MNIST sources, nMNIST composition, synthetic slides, CAMELYON reading,
nCAMELYON crops and the sharded writer.

Nothing here imports TensorFlow at module level (generator worker processes start without it);
only `writer.write_dataset` imports it, in the main process, to frame the records.
"""
