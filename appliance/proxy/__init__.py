"""The relay: the one place where sockets are read and written."""
