"""SES v2 and SNS on 127.0.0.1 for tests: moto's server mode in a thread, spoken to over
real HTTP by real boto3, and read back through moto's own `/moto-api/` endpoints (so the
same code would work against a moto server in another process).

    with MotoLoopback() as moto:              # or start()/stop(); module-scoped fixtures
        moto.client("sesv2").create_email_identity(EmailIdentity="shop@example.com")
        ... moto.url, moto.records().emails, moto.records().sms, moto.reset()
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

HOST = "127.0.0.1"
REGION = "us-east-1"
# moto accepts any credentials; fixed ones keep boto3 away from the real credential chain.
ACCESS_KEY_ID = SECRET_ACCESS_KEY = "testing"


@dataclass(frozen=True)
class SentEmail:
    source: str
    to: list[str]
    subject: str
    body: str  # moto keeps one body: the html part when there is one, else the text
    message_id: str = ""  # SES's, as SendEmail answered it


@dataclass(frozen=True)
class SentSms:
    message_id: str
    phone_number: str
    message: str


@dataclass(frozen=True)
class MotoRecords:
    emails: list[SentEmail]
    sms: list[SentSms]


class MotoLoopback:
    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
        self.url = ""

    def start(self) -> MotoLoopback:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()
        # ThreadedMotoServer.stop ends serve_forever but leaves the listening socket open,
        # so a "stopped" server would still accept connections (and never answer). Closing
        # it is the only reach into moto's private state, kept to this one line.
        self._server._server.server_close()  # type: ignore[union-attr]

    def __enter__(self) -> MotoLoopback:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def settings(self, **extra: Any) -> dict[str, Any]:
        """Raw provider settings (as parse_settings takes them) pointing at this server."""
        return {"region": REGION, "access_key_id": ACCESS_KEY_ID, "secret_access_key": SECRET_ACCESS_KEY,
                "endpoint_url": self.url, **extra}

    def client(self, service: str) -> Any:
        """A plain boto3 client, for arranging state (identities) from the test."""
        return boto3.client(service, endpoint_url=self.url, region_name=REGION, aws_access_key_id=ACCESS_KEY_ID,
                            aws_secret_access_key=SECRET_ACCESS_KEY, config=Config(retries={"max_attempts": 1}))

    def records(self) -> MotoRecords:
        """Every email SES and every SMS SNS accepted since the last reset."""
        with urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=10) as response:
            models = json.load(response)
        emails = [SentEmail(m["source"], [a for addresses in m["destinations"].values() for a in addresses],
                            m["subject"], m["body"], m["id"]) for m in models.get("ses", {}).get("Message", [])]
        sms = [SentSms(m["message_id"], m["phone_number"], m["message"]) for m in models.get("sns", {}).get("SMS", [])]
        return MotoRecords(emails, sms)

    def reset(self) -> None:
        """Forget all state: identities, sent mail and SMS."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass
