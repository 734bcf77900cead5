# GENERATED CODE LIVES HERE: do not edit the *_pb2*.py / *_pb2.pyi modules under this package by hand.
# They are generated from proto/secfed/proto/v1/federation.proto by scripts/gen-proto and committed;
# tests/wire/test_proto_fresh.py fails when they are out of date with the .proto.
"""Generated protobuf and gRPC modules of the secfed wire contract (one subpackage per version)."""
