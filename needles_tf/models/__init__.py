"""BagNet encoder, global pooling layers and classifier assembly (backend-agnostic Keras 3)."""
