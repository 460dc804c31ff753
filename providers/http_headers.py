"""What a provider may add to the requests the gateway sends it (`extra_headers`).

A header the HTTP clients refuse (CR, LF or NUL in it) made every call to the
provider a 500; one they let through unchecked (a name with spaces or a colon,
a value out of ASCII) went on the wire malformed; and a framing header
(Content-Length, Transfer-Encoding, ...) could desynchronise a pooled
connection that other tenants' calls to the same upstream reuse. Checked when a
provider is saved, and again when the routing table is loaded, so that a row
saved before these checks fails its calls with a clean 502.
"""

import re
from collections.abc import Mapping

# RFC 9110 §5.6.2: a token.
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# Printable ASCII, spaces and tabs inside only: what every client here sends as is.
_VALUE = re.compile(r"([\x21-\x7e]([\t\x20-\x7e]*[\x21-\x7e])?)?\Z")
# The gateway frames each request itself.
FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
                     "trailer", "upgrade", "expect", "proxy-connection"})


def value_problem(what: str, value: object) -> str:
    """Why `value` cannot be sent as a header value ("" when it can); never quotes it."""
    if not isinstance(value, str):
        return f"{what} must be a string."
    if not _VALUE.match(value):
        return (f"{what} must be printable ASCII, with no line breaks, control characters "
                "or spaces at either end.")
    return ""


def problem(headers: object) -> str:
    """Why these extra headers cannot be sent ("" when they can), naming the header, not its value."""
    if not isinstance(headers, Mapping):
        return "Expected a JSON object of header names to string values."
    for name, value in headers.items():
        if not isinstance(name, str) or not _NAME.match(name):
            return (f"{name[:60]!r} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only, "
                    "no spaces, colons or line breaks).")
        if name.lower() in FRAMING:
            return f"The gateway sets {name} itself; it cannot be an extra header."
        if reason := value_problem(f"The value of {name}", value):
            return reason
    return ""
