"""How mailops runs a notebook: papermill with the python3 kernel, spoken to over IPC
(unix sockets beside the kernel's connection file, in Jupyter's 0700 runtime directory)
instead of TCP ports on loopback, which any local user can reach and about which
ipykernel 7 warns at every start ("Kernel is running over TCP without encryption")."""
from __future__ import annotations

from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import default


class IPCKernelManager(AsyncKernelManager):
    @default("transport")
    def _transport_default(self) -> str:
        return "ipc"


def execute(notebook: str | Path, out: str | Path, parameters: dict, **kwargs):
    """papermill.execute_notebook with mailops' kernel settings; the executed notebook."""
    import papermill
    kwargs.setdefault("progress_bar", False)
    return papermill.execute_notebook(str(notebook), str(out), parameters=parameters,
                                      kernel_name="python3", kernel_manager_class=IPCKernelManager,
                                      **kwargs)
