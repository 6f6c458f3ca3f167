"""Hash the rspamd controller password on the server without it touching argv.

`rspamadm pw` reads the passphrase from a terminal only (and flushes input
before reading), so it runs on a pty and gets the password after its prompt.
Input: the password on stdin; output: the hash.
"""
import os
import pty
import sys

password = sys.stdin.readline().rstrip("\n")
pid, fd = pty.fork()
if pid == 0:
    os.execvp("rspamadm", ["rspamadm", "pw"])
seen = b""
while b"passphrase" not in seen.lower():
    chunk = os.read(fd, 1024)
    if not chunk:
        sys.exit("rspamadm pw: no prompt")
    seen += chunk
os.write(fd, password.encode() + b"\n")
out = b""
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
lines = [line.strip() for line in out.decode(errors="replace").splitlines() if line.strip()]
if status != 0 or not lines or not lines[-1].startswith("$"):
    sys.exit("rspamadm pw failed: " + (lines[-1] if lines else "no output"))
print(lines[-1])
