"""zmqrpc's test suite.

With ``ZMQRPC_TEST_EVENTLET=1`` every test process that imports this package (pytest itself, and the RPC
server processes the tests start) runs eventlet-patched, as nova-compute and most OpenStack services do.
The same tests then prove the green core as well as the threading one; proxies stay plain processes.
"""

import os
import warnings

if os.environ.get("ZMQRPC_TEST_EVENTLET") == "1":
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import eventlet

    eventlet.monkey_patch()
