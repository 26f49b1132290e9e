"""gRPC client stubs for TorchServe 0.12's inference and management services (generated; see README.md)."""
