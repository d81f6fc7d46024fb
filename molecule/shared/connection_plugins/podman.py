# The molecule lab's connection: containers.podman's podman connection, with pipelining.
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt), as the plugin it extends.
"""Run each module in a lab host with one `podman exec --interactive`, its code on stdin (pipelining).

containers.podman's connection runs `podman exec` without --interactive, so it cannot pipe a module in: every
task makes a temporary directory, copies the module, runs it and removes the directory, four or five
`podman exec` calls of about 0.4 s each on a loaded 2-core machine. This one passes stdin through when
Ansible pipelines, and is otherwise the same plugin. Molecule names the connection `podman`;
.config/molecule/config.yml puts this directory first on the connection plugin path.
"""

from __future__ import annotations

import shlex

from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.connection import ConnectionBase, ensure_connect
from ansible_collections.containers.podman.plugins.connection.podman import Connection as PodmanConnection

DOCUMENTATION = """
    name: podman
    short_description: Interact with an existing podman container, with pipelining
    description:
        - containers.podman.podman, plus pipelining (C(podman exec --interactive) when a module is piped in).
    extends_documentation_fragment:
        - connection_pipelining
    options:
      remote_addr:
        description:
          - The ID of the container you want to access.
        default: inventory_hostname
        vars:
          - name: ansible_host
          - name: inventory_hostname
          - name: ansible_podman_host
      remote_user:
        description:
            - User specified via name or UID which is used to execute commands inside the container.
        ini:
          - section: defaults
            key: remote_user
        env:
          - name: ANSIBLE_REMOTE_USER
        vars:
          - name: ansible_user
      podman_extra_args:
        description:
          - Extra arguments to pass to the podman command line.
        default: ''
        ini:
          - section: defaults
            key: podman_extra_args
        vars:
          - name: ansible_podman_extra_args
        env:
          - name: ANSIBLE_PODMAN_EXTRA_ARGS
      podman_executable:
        description:
          - Executable for podman command.
        default: podman
        vars:
          - name: ansible_podman_executable
        env:
          - name: ANSIBLE_PODMAN_EXECUTABLE
"""


class Connection(PodmanConnection):
    """containers.podman.podman with pipelining."""

    has_pipelining = True

    @ensure_connect
    def exec_command(self, cmd, in_data=None, sudoable=False):
        if in_data is None:
            return super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        ConnectionBase.exec_command(self, cmd, in_data=in_data, sudoable=sudoable)
        exec_args = ["exec", "--interactive"]
        if self.user:
            exec_args.extend(("--user", self.user))
        return self._podman(exec_args, shlex.split(to_native(cmd, errors="surrogate_or_strict")), in_data)
