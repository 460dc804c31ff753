"""Request ids: the gateway's own, and a client's `x-request-id` when it is sane."""

import re
import uuid

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,100}$")


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def client_request_id(headers) -> str:
    """The client's x-request-id when it is sane, else "".

    It is echoed back and stored beside the gateway's own id, never used as the
    usage record's key: a client repeating one id must still be billed per call.
    """
    given = headers.get("x-request-id")
    return given if given and _CLIENT_REQUEST_ID.match(given) else ""


def request_id_from(headers) -> str:
    """The id to answer with: the client's, or a new one."""
    return client_request_id(headers) or new_request_id()
