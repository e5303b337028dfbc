"""A stand-in for SNS's side of an HTTP subscription, on 127.0.0.1: it signs messages the
way SNS does (RSA over the fields AWS lists, SignatureVersion 1 or 2) with a key of its
own, serves that key's certificate at its SigningCertURL, and records the subscription
confirmations it is sent. Gateways under test accept its URLs through
`sns_url_pattern`.

    with SnsLoopback() as sns:
        body = sns.notification(topic_arn, {"eventType": "Delivery", ...})
        ... sns.confirmations
"""

from __future__ import annotations

import base64
import datetime
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from kairos.channels.sns_messages import string_to_sign

HOST = "127.0.0.1"
URL_PATTERN = r"http://127\.0\.0\.1:\d+/"  # the gateway's sns_url_pattern for these tests


def signing_pair() -> tuple[rsa.RSAPrivateKey, bytes]:
    """A fresh RSA key and a self-signed certificate (PEM) for it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.loopback")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return key, certificate.public_bytes(serialization.Encoding.PEM)


def sign(message: dict[str, Any], key: rsa.RSAPrivateKey, version: str = "2") -> dict[str, Any]:
    algorithm = hashes.SHA256() if version == "2" else hashes.SHA1()
    signature = key.sign(string_to_sign({**message, "SignatureVersion": version}), padding.PKCS1v15(), algorithm)
    return {**message, "SignatureVersion": version, "Signature": base64.b64encode(signature).decode()}


class SnsLoopback:
    def __init__(self) -> None:
        self.key, self.certificate = signing_pair()
        self.confirmations: list[str] = []  # tokens of confirmed subscriptions
        loopback = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                parts = urlsplit(self.path)
                if parts.path == "/cert.pem":
                    body = loopback.certificate
                elif parts.path == "/confirm":
                    loopback.confirmations.extend(parse_qs(parts.query).get("Token", []))
                    body = b"<ConfirmSubscriptionResponse/>"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> SnsLoopback:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _signed(self, message: dict[str, Any]) -> dict[str, Any]:
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        return sign({"MessageId": str(uuid.uuid4()), "Timestamp": now, "SigningCertURL": f"{self.url}/cert.pem",
                     **message}, self.key)

    def notification(self, topic_arn: str, event: dict[str, Any]) -> dict[str, Any]:
        return self._signed({"Type": "Notification", "TopicArn": topic_arn, "Message": json.dumps(event)})

    def subscription_confirmation(self, topic_arn: str) -> dict[str, Any]:
        token = uuid.uuid4().hex
        return self._signed({"Type": "SubscriptionConfirmation", "TopicArn": topic_arn, "Token": token,
                             "Message": "You have chosen to subscribe to the topic.",
                             "SubscribeURL": f"{self.url}/confirm?Action=ConfirmSubscription&Token={token}"})
