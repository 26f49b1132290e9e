"""Operator tooling for movierec: the TorchServe instance, the client CLI and the benchmarks."""
