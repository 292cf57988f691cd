"""Generated gRPC stubs (python protos/gen.py); do not edit."""
