"""The daemon's control socket (socket_server.py) and the operations it serves (operations.py)."""
