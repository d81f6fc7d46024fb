# Copyright: zmqrpc contributors
# Apache License 2.0 (see pyproject.toml)
"""Documentation shared by the modules that run a node's own zmqrpc command with its config file."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  config_file:
    description: The node's zmqrpc config file.
    type: path
    default: /etc/zmqrpc/zmqrpc.conf
  executable:
    description: The zmqrpc command of the node.
    type: path
    default: /opt/zmqrpc/venv/bin/zmqrpc
"""
