"""oslo.messaging's own functional suite against zmqrpc (``python -m tests.oslo_functional.runner``)."""
