"""The Hugging Face hub: offline mode, a quick reachability probe, and what to say when it fails.

Without the probe, a machine without network waits through the hub client's retries (~25 s)
and then shows a traceback; with it, the answer is one line at once.
"""

import functools
import os
import socket
import urllib.parse

_TRUE = ("1", "true", "yes", "on")
# httpx / requests exception classes that mean "no connection" (matched by name: either may be used)
_NETWORK_ERRORS = {"ConnectError", "ConnectTimeout", "ReadTimeout", "NetworkError", "TransportError"}


def offline() -> bool:
    flags = (os.environ.get(v, "").lower() for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(f in _TRUE for f in flags)


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@functools.cache
def reachable(timeout: float = 3.0) -> bool:
    """A TCP connection to the hub's host within ``timeout`` seconds."""
    url = urllib.parse.urlparse(endpoint())
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except (OSError, UnicodeError):
        return False


def unreachable() -> str:
    """The one-line reason and fix for a hub that cannot be reached."""
    host = urllib.parse.urlparse(endpoint()).hostname
    return (
        f"the Hugging Face hub is unreachable ({host}): check the network or HF_ENDPOINT, "
        "or set HF_HUB_OFFLINE=1 to use only local files and the local cache"
    )


def is_network_error(e: BaseException) -> bool:
    """A connection-level failure (DNS, refused, timeout), whichever HTTP client raised it."""
    while e is not None:
        names = {c.__name__ for c in type(e).__mro__}
        if isinstance(e, ConnectionError | TimeoutError | socket.gaierror) or names & _NETWORK_ERRORS:
            return True
        e = e.__cause__ or e.__context__
    return False
