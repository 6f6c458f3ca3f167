"""Notebooks run over IPC, not TCP ports on loopback (mailops/core/kernel.py)."""
import json
import os
import socket
from pathlib import Path

import nbformat

from mailops.core import kernel


def test_a_notebook_runs_over_ipc_without_the_tcp_warning(tmp_path, capfd, monkeypatch):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {
        "name": "python3", "language": "python", "display_name": "Python 3"}})
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(
                    "import json, os\n"
                    "from ipykernel.kernelapp import IPKernelApp\n"
                    "app = IPKernelApp.instance()\n"
                    "print(json.dumps({'x': x * 2, 'transport': app.transport}))")]
    src, out = tmp_path / "t.ipynb", tmp_path / "o.ipynb"
    nbformat.write(nb, src)
    opened = []
    real_bind = socket.socket.bind
    monkeypatch.setattr(socket.socket, "bind", lambda self, addr: (opened.append(addr),
                                                                   real_bind(self, addr))[1])
    done = kernel.execute(src, out, {"x": 21}, cwd=str(tmp_path))
    printed = json.loads(done.cells[-1].outputs[0]["text"])
    assert printed == {"x": 42, "transport": "ipc"}
    assert "running over TCP" not in capfd.readouterr().err
    # with TCP the kernel manager binds five ports on 127.0.0.1 to pick the kernel's
    assert not [a for a in opened if isinstance(a, tuple) and a[0] == "127.0.0.1"]


def test_kernels_started_at_once_each_get_their_own_sockets(tmp_path):
    """Hosts provision in parallel, each step a kernel: with jupyter_client's default IPC
    path ("kernel-ipc" in the working directory, ports the first free numbers) kernels
    started together took the same sockets and one never answered ("Kernel didn't respond")."""
    from concurrent.futures import ThreadPoolExecutor
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {
        "name": "python3", "language": "python", "display_name": "Python 3"}})
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(x * 2)")]
    src = tmp_path / "t.ipynb"
    nbformat.write(nb, src)

    def run(i):
        done = kernel.execute(src, tmp_path / f"o{i}.ipynb", {"x": i}, cwd=str(tmp_path),
                              start_timeout=30)
        return done.cells[-1].outputs[0]["text"]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(run, range(4))) == [f"{2 * i}\n" for i in range(4)]
    assert not list(tmp_path.glob("kernel-ipc*"))          # nothing left in the working dir
    from jupyter_core.paths import jupyter_runtime_dir
    # this process's sockets removed (another run's kernels may be at work meanwhile)
    assert not list(Path(jupyter_runtime_dir()).glob(f"mailops-{os.getpid()}-*"))
