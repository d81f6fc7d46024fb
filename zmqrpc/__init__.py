"""zmqrpc: a brokerless RPC message bus on ZeroMQ."""

__version__ = "0.1.0"
