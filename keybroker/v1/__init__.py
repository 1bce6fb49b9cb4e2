"""Generated gRPC/protobuf modules for keybroker.v1 (built at install time, never committed)."""
