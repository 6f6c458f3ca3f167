"""How mailops runs a notebook: papermill with the python3 kernel, spoken to over IPC
(unix sockets beside the kernel's connection file, in Jupyter's 0700 runtime directory)
instead of TCP ports on loopback, which any local user can reach and about which
ipykernel 7 warns at every start ("Kernel is running over TCP without encryption")."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from jupyter_core.paths import jupyter_runtime_dir
from traitlets import default


class IPCKernelManager(AsyncKernelManager):
    @default("transport")
    def _transport_default(self) -> str:
        return "ipc"

    @default("ip")
    def _ip_default(self) -> str:
        """Sockets of this kernel's own: jupyter_client's default ("kernel-ipc" in the
        working directory, then the first free numbers) races when hosts provisioned in
        parallel start kernels at once, and a kernel then never answers."""
        runtime = Path(jupyter_runtime_dir())
        runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
        # the controller's pid first: a process can tell its own kernels' sockets
        return str(runtime / f"mailops-{os.getpid()}-{uuid.uuid4().hex[:16]}")


def execute(notebook: str | Path, out: str | Path, parameters: dict, **kwargs):
    """papermill.execute_notebook with mailops' kernel settings; the executed notebook."""
    import papermill
    kwargs.setdefault("progress_bar", False)
    return papermill.execute_notebook(str(notebook), str(out), parameters=parameters,
                                      kernel_name="python3", kernel_manager_class=IPCKernelManager,
                                      **kwargs)
