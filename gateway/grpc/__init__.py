"""The gRPC front door: `inference.GRPCInferenceService` and the conversion of its messages."""
