"""Waits until a server listens on HOST PORT, so that `make run` prints the address and the
demo login after Daphne's start-up lines, not before them (where they scroll away).

    python scripts/wait_for_port.py 127.0.0.1 8000 <server pid>

Exits 0 once a connection is accepted; 1 if the server process exits first, or after two
minutes."""

import socket
import sys
import time
from pathlib import Path


def running(pid: int) -> bool:
    """Alive, and not a zombie (it exited, and the shell that waits for it has not yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


host, port, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    if not running(pid):
        sys.exit(f"The server exited before listening on {host}:{port}.")
    try:
        with socket.create_connection((host, port), timeout=1):
            sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(f"Nothing listens on {host}:{port} after two minutes.")
