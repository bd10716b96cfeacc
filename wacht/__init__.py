"""Generated gRPC/protobuf stubs for the Wacht API (see protos/)."""
