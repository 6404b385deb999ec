"""The records API codec: named-feature records and columns in, model tensors out, predictions back,
generated per model from its manifest."""
