"""Block network access from every Python process that starts with this folder on PYTHONPATH.

Python imports `sitecustomize` at start-up, so putting this folder first on PYTHONPATH reaches the processes the
test-suite does not create itself: the Jupyter kernels that nbval starts for each notebook, and any Python process a
notebook starts (pip, a data loader worker). With COURSE_NETBLOCK=1 a connection to anything but this machine
(loopback or a Unix socket) raises `NetworkBlocked`, and so does a DNS look-up of a name that is not local. The
kernel's own channels to Jupyter use ZeroMQ's sockets on 127.0.0.1, which are not Python sockets and stay open.

This is what makes `make test` prove that the notebooks need no network: a hidden download (a dataset, a model
hub, `pip install` in a cell) fails the notebook with a clear message. tests/e2e/test_offline.py proves the block
works. CI adds an OS-level block on top where the machine permits it (`unshare -n`, see .ci/run).
"""
import os

if os.environ.get("COURSE_NETBLOCK") == "1":
    import ipaddress
    import socket

    class NetworkBlocked(ConnectionRefusedError):
        """Raised instead of a network connection while COURSE_NETBLOCK=1 (the course must run offline)."""

    _LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", ""}

    def _is_local_host(host) -> bool:
        if host is None:
            return True
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        host = str(host).strip("[]").split("%")[0].lower()
        if host in _LOCAL_NAMES:
            return True
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False                      # a name that is not local: resolving it would need the network
        return addr.is_loopback or addr.is_unspecified

    def _check(address, what):
        # AF_UNIX addresses are paths (str/bytes) and stay allowed; inet addresses are (host, port, ...) tuples.
        if isinstance(address, tuple) and address and not _is_local_host(address[0]):
            raise NetworkBlocked(f"network access blocked ({what} {address[0]!r}): the course must run offline "
                                 "(COURSE_NETBLOCK=1, set by the test-suite)")

    _connect, _connect_ex, _sendto = socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto
    _getaddrinfo, _gethostbyname = socket.getaddrinfo, socket.gethostbyname

    def connect(self, address):
        _check(address, "connect to")
        return _connect(self, address)

    def connect_ex(self, address):
        _check(address, "connect to")
        return _connect_ex(self, address)

    def sendto(self, data, *args):
        _check(args[-1], "send to")        # sendto(data, address) or sendto(data, flags, address)
        return _sendto(self, data, *args)

    def getaddrinfo(host, *args, **kwargs):
        _check((host,), "look up")
        return _getaddrinfo(host, *args, **kwargs)

    def gethostbyname(host):
        _check((host,), "look up")
        return _gethostbyname(host)

    socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto = connect, connect_ex, sendto
    socket.getaddrinfo, socket.gethostbyname = getaddrinfo, gethostbyname
    socket.NetworkBlocked = NetworkBlocked   # so a test can name the exception
