"""Benchmarks of zmqrpc beside its peers (raw pyzmq, nats-py, oslo.messaging over RabbitMQ).

They run from a source checkout, not from the installed package: ``python -m benchmarks --help`` (the same
command line as ``zmqrpc bench``, which launches them). They share the daemon helpers of ``tests/servers.py``.

* :mod:`benchmarks.bench`: the run, its topologies, the raw pyzmq baseline and the command line
* :mod:`benchmarks.measure`: the measured window and what one side of a figure saw
* :mod:`benchmarks.procs`: the server processes of a measurement
* :mod:`benchmarks.nats_peer`: nats-py request/reply through a real nats-server
* :mod:`benchmarks.bench_oslo`: oslo.messaging over zmqrpc and over RabbitMQ
* :mod:`benchmarks.report`: tables and the ``--plot`` PNG
"""
