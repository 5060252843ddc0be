"""Starts a program the way systemd socket activation does: a listening Unix
socket at fd 3, LISTEN_FDS=1, LISTEN_FDNAMES, and LISTEN_PID set to the
program's own pid (set in the child between fork and exec)."""
import os
import socket
import sys

path, name, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o600)
s.listen(64)
pid = os.fork()
if pid == 0:
    os.dup2(s.fileno(), 3)
    os.set_inheritable(3, True)
    os.environ["LISTEN_FDS"] = "1"
    os.environ["LISTEN_FDNAMES"] = name
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.execv(argv[0], argv)
s.close()
print(pid, flush=True)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
