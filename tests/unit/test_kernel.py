"""Notebooks run over IPC, not TCP ports on loopback (mailops/kernel.py)."""
import json
import socket

import nbformat

from mailops import kernel


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
