"""The V2 gRPC protocol: `grpc_service.proto` and `model_config.proto`, and the Python
modules protoc generated from them (`*_pb2.py`, typed by `*_pb2.pyi`).

The generated files are committed, so serving needs only grpcio and protobuf; after editing
a .proto, regenerate them with `python -m gateway.proto` (grpcio-tools, a dev dependency).
A test fails while they differ from what the .proto files generate.
"""
