"""Every error the API returns, in OpenAI's shape, mapped to HTTP in one place.

Domain code raises GatewayError (or one of the named constructors below); the
views turn it into ``{"error": {"message", "type", "param", "code"}}`` with the
right status and headers.
"""

import orjson
from django.http import HttpResponse


class GatewayError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        return orjson.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        )

    def response(self) -> HttpResponse:
        body = self.body()
        response = HttpResponse(body, status=self.status, content_type="application/json")
        response["content-length"] = str(len(body))
        for name, value in self.headers.items():
            response[name] = value
        return response


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


# One body for unknown, revoked, expired and malformed keys: the answer must not
# tell an attacker which of those a guessed key is.
INVALID_KEY_MESSAGE = "Incorrect API key provided. Check the key or ask your gateway admin for a new one."


def invalid_key() -> GatewayError:
    return GatewayError(401, INVALID_KEY_MESSAGE, type="invalid_request_error", code="invalid_api_key")


def missing_key() -> GatewayError:
    return GatewayError(
        401,
        "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
        code="missing_api_key",
    )


def model_not_allowed(model: str) -> GatewayError:
    return GatewayError(
        403,
        f"This API key is not allowed to use the model '{model}'.",
        type="permission_error",
        code="model_not_allowed",
        param="model",
    )


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, f"Request body too large: the limit is {limit} bytes.", code="request_too_large"
    )


def upstream_failed(message: str, *, headers: dict[str, str] | None = None) -> GatewayError:
    return GatewayError(502, message, type="upstream_error", code="upstream_error", headers=headers)


def upstream_timeout(message: str) -> GatewayError:
    return GatewayError(504, message, type="upstream_error", code="upstream_timeout")


def database_unavailable() -> GatewayError:
    """The database is away and what this request needs (a key, a route, limits) was never cached."""
    return GatewayError(503, "The gateway cannot reach its database to check this request; try again shortly.",
                        type="server_error", code="database_unavailable", headers={"retry-after": "5"})


def internal_error() -> GatewayError:
    return GatewayError(
        500, "The gateway failed to handle this request.", type="server_error", code="internal_error"
    )
