"""Generated protobuf messages of the KServe v2 gRPC protocol (see kserve_v2.proto; `make proto`)."""
