"""Credentials and isolation between accounts."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_missing_or_wrong_credentials_get_401(make_api: Any) -> None:
    api = await make_api()
    body = {"d": [event("x")]}
    for headers in (
        {},
        {"X-CleverTap-Account-Id": api.creds.account_id},
        {"X-CleverTap-Account-Id": api.creds.account_id, "X-CleverTap-Passcode": "wrong"},
        {"X-CleverTap-Account-Id": "NOP-NOP-NOPE", "X-CleverTap-Passcode": api.creds.passcode},
    ):
        status, payload = await api.request("POST", "/1/upload", body, headers=headers)
        assert status == 401
        assert payload["status"] == "fail" and payload["code"] == 401 and payload["error"]
    status, payload = await api.request("GET", "/1/profile.json?identity=x", headers={})
    assert status == 401


async def test_one_account_never_sees_another(make_api: Any) -> None:
    alice, bob = await make_api(), await make_api()
    await alice.upload([event("shared-id", "Secret", Amount=1),
                        {"identity": "shared-id", "type": "profile", "profileData": {"Email": "s@example.com"}}])
    assert (await bob.profile(identity="shared-id"))[0] == 404
    assert (await bob.profile(email="s@example.com"))[0] == 404
    assert await bob.count_events("Secret") == 0

    # Bob writes the same user id: two separate profiles.
    await bob.upload([event("shared-id", "Secret", Amount=2)])
    assert await alice.count_events("Secret") == 1
    assert (await alice.profile(identity="shared-id"))[1]["record"]["events"]["Secret"]["count"] == 1

    # Alice's download cursor is useless to Bob.
    status, body = await alice.request("POST", "/1/events.json?batch_size=10",
                                       {"event_name": "Secret", "from": 20200101, "to": 20301231})
    status, page = await bob.request("GET", f"/1/events.json?cursor={body['cursor']}")
    assert status == 400 and page["error"] == "cursor is not valid"
