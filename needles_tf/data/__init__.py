"""The dataset contract shared by generation and input: the TFRecord schema (`schema`) and the
dataset directory with its dataset.json (`metadata`). Neither imports TensorFlow at module level.
"""
