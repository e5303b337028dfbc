"""The `kairos` command: `kairos up`, `kairos account create NAME`, and `kairos journey ...`
(which talks to a running gateway through kairos.client)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
import yaml

from kairos.accounts import AccountError, Accounts, Credentials
from kairos.client import KairosClient, KairosError
from kairos.config import ConfigError, Settings, load_settings
from kairos.redis_server import EmbeddedRedis, running_url

DEFAULT_URL = "http://127.0.0.1:8080"


class CliError(Exception):
    """A mistake in what the command was given: printed as `kairos: <message>`, exit 2."""


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        data_dir=args.data_dir, host=getattr(args, "host", None), port=getattr(args, "port", None),
        ray_address=getattr(args, "address", None),
    )


def _create_account(settings: Settings, name: str) -> tuple[Credentials, str]:
    """The new account, and where it was written (so a user in the wrong directory sees it)."""
    with ExitStack() as stack:
        url = settings.redis_url or running_url(settings.data_path)
        where = f"Redis at {url}" if url else ""
        if not url:
            # Kairos is not running: open its data directory with a Redis of our own.
            url = stack.enter_context(EmbeddedRedis(settings.data_path, settings.redis_fsync)).url
            where = f"data directory {settings.data_path} (Kairos is not running on it)"
        elif not settings.redis_url:
            where = f"the Kairos running on data directory {settings.data_path}"

        async def create() -> Credentials:
            client = aioredis.Redis.from_url(url)
            try:
                return await Accounts(client).create(name)
            finally:
                await client.aclose()

        return asyncio.run(create()), where


class _JsonLikeYaml(yaml.SafeLoader):
    """YAML read the way JSON reads: only true/false are booleans (a branch's `yes:` and
    `no:` stay keys), only plain decimals are integers (`time: 10:30` stays a string, not
    YAML 1.1's base-60 630), and dates and datetimes stay strings."""


_DROPPED = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:timestamp"}
_JsonLikeYaml.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _DROPPED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_JsonLikeYaml.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))
_JsonLikeYaml.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"),
                                    list("-+0123456789"))


def load_definition(path: str) -> dict[str, Any]:
    """A journey definition from a .json file, or YAML (.yaml, .yml or anything else)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    try:
        if path.endswith(".json"):
            raw = json.loads(text)
        else:
            raw = yaml.load(text, Loader=_JsonLikeYaml)  # a SafeLoader: no arbitrary objects
    except (ValueError, yaml.YAMLError) as exc:
        detail = str(exc).replace('"<unicode string>"', path)
        raise CliError(f"{path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: {detail}") from None
    if not isinstance(raw, dict):
        raise CliError(f"{path} must hold a journey definition: an object with 'entry', 'start' and 'nodes'")
    try:
        # What JSON cannot carry (NaN, infinities, binary, a YAML alias that contains itself).
        json.dumps(raw, allow_nan=False)
    except (ValueError, TypeError, RecursionError) as exc:
        raise CliError(f"{path} holds a value JSON cannot carry: {exc}") from None
    return raw


def _client(args: argparse.Namespace) -> KairosClient:
    account = args.account or os.environ.get("KAIROS_ACCOUNT_ID")
    passcode = args.passcode or os.environ.get("KAIROS_PASSCODE")
    if not account:
        raise CliError("no account: give --account or set KAIROS_ACCOUNT_ID")
    if not passcode:
        raise CliError("no passcode: give --passcode or set KAIROS_PASSCODE")
    return KairosClient(args.url, account, passcode)


def _print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2, ensure_ascii=False))


def _journey_command(args: argparse.Namespace) -> None:
    command = args.journey_command
    definition = load_definition(args.file) if command == "put" else {}
    with _client(args) as client:
        try:
            if command == "put":
                saved = client.save_journey(args.name, definition, args.description)
                print(f"saved {saved['name']!r} version {saved['version']} ({saved['status']})")
            elif command == "list":
                found = client.journeys()
                if not found:
                    print("no journeys")
                for journey in found:
                    line = f"{journey['name']}\tv{journey['version']}\t{journey['status']}"
                    print(line + (f"\t{journey['description']}" if journey["description"] else ""))
            elif command == "show":
                _print_json(client.journey(args.name, args.version))
            elif command == "stats":
                _print_json(client.journey_stats(args.name))
            elif command in ("pause", "resume"):
                change = client.pause_journey if command == "pause" else client.resume_journey
                saved = change(args.name)
                print(f"{saved['name']!r} is {saved['status']} (version {saved['version']})")
            elif command == "delete":
                client.delete_journey(args.name)
                print(f"deleted {args.name!r}")
        except KairosError as exc:
            raise CliError(exc.message if exc.status < 500 else str(exc)) from None
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach Kairos at {args.url}: {exc}") from None


def _add_journey_commands(commands: Any) -> None:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", default=DEFAULT_URL, help=f"the gateway (default {DEFAULT_URL})")
    connection.add_argument("--account", help="account id (default: $KAIROS_ACCOUNT_ID)")
    connection.add_argument("--passcode", help="passcode (default: $KAIROS_PASSCODE)")
    journey = commands.add_parser("journey", help="manage journeys on a running Kairos")
    journey_commands = journey.add_subparsers(dest="journey_command", required=True)
    put = journey_commands.add_parser("put", parents=[connection],
                                      help="save a journey from a JSON or YAML file (a new version each time)")
    put.add_argument("name")
    put.add_argument("file", help="the definition: a .json file, else read as YAML")
    put.add_argument("--description", help="(default: keep the one saved before)")
    journey_commands.add_parser("list", parents=[connection], help="list the account's journeys")
    show = journey_commands.add_parser("show", parents=[connection], help="print a journey and its definition")
    show.add_argument("name")
    show.add_argument("--version", type=int, help="show this version's definition (default: the current one)")
    for command, text in (("stats", "print a journey's counters"), ("pause", "pause a journey"),
                          ("resume", "resume a paused journey"), ("delete", "delete a journey and its counters")):
        journey_commands.add_parser(command, parents=[connection], help=text).add_argument("name")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kairos", description="Kairos customer engagement platform")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start Kairos on this machine (or join a Ray cluster)")
    up.add_argument("--data-dir", help="data directory (default: $KAIROS_DATA_DIR or ./.kairos)")
    up.add_argument("--host", help="gateway address (default 127.0.0.1)")
    up.add_argument("--port", type=int, help="gateway port (default 8080)")
    up.add_argument("--address", help="join this Ray cluster instead of starting Ray (default: $RAY_ADDRESS)")
    up.add_argument("--demo", action="store_true", help="(re)issue the 'demo' account's passcode and print it")
    account = commands.add_parser("account", help="manage accounts")
    account_commands = account.add_subparsers(dest="account_command", required=True)
    create = account_commands.add_parser("create", help="create an account; prints its id, passcode and Segment write key")
    create.add_argument("name")
    create.add_argument("--data-dir", help="data directory (default: $KAIROS_DATA_DIR or ./.kairos)")
    _add_journey_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "journey":
            _journey_command(args)
            return 0
        settings = _settings(args)
        if args.command == "up":
            from kairos.runtime import up as run_up

            run_up(settings, demo=args.demo, on_ready=lambda s: print(s, flush=True))
        else:
            creds, where = _create_account(settings, args.name)
            print(f"account id: {creds.account_id}\npasscode:   {creds.passcode}\nwrite key:  {creds.write_key}")
            print(f"Created in {where}.")
            print("Keep the passcode and write key: Kairos stores only their hashes and cannot show them again.")
    except (ConfigError, AccountError, CliError) as exc:
        print(f"kairos: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
