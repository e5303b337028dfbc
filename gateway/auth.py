"""CleverTap-style authentication: account id and passcode headers on every `/1/` and
`/api/` call."""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web
from redis.exceptions import RedisError

from gateway.errors import ApiError
from kairos.accounts import Accounts

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ACCOUNT_HEADER = "X-CleverTap-Account-Id"
PASSCODE_HEADER = "X-CleverTap-Passcode"
# The authenticated account of a request; handlers read it, never the raw header.
ACCOUNT = web.RequestKey("account", str)
# The API's own description is public, as an API's documentation usually is.
PUBLIC_PATHS = frozenset({"/api/openapi.json"})


def auth_middleware(accounts: Accounts) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(("/1/", "/api/")) and request.path not in PUBLIC_PATHS:
            account = request.headers.get(ACCOUNT_HEADER, "")
            passcode = request.headers.get(PASSCODE_HEADER, "")
            if not account or not passcode:
                raise ApiError(401, f"{ACCOUNT_HEADER} and {PASSCODE_HEADER} headers are required")
            if not (account.isascii() and passcode.isascii()):
                # Ids and passcodes Kairos issues are ASCII; anything else cannot match.
                raise ApiError(401, "Invalid account id or passcode")
            try:
                authenticated = await accounts.authenticate(account, passcode)
            except RedisError:
                raise ApiError(503, "service unavailable, retry later: accounts store unreachable") from None
            if not authenticated:
                raise ApiError(401, "Invalid account id or passcode")
            request[ACCOUNT] = account
        return await handler(request)

    return auth
