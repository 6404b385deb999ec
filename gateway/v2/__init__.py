"""The Open Inference Protocol (KServe V2): tensors in JSON and binary, and Triton's configuration and
statistics extensions."""
