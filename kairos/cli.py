"""The `kairos` command: `kairos up` and `kairos account create NAME`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import ExitStack

import redis.asyncio as aioredis

from kairos.accounts import AccountError, Accounts, Credentials
from kairos.config import ConfigError, Settings, load_settings
from kairos.redis_server import EmbeddedRedis, running_url


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


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
        if args.command == "up":
            from kairos.runtime import up as run_up

            run_up(settings, demo=args.demo, on_ready=lambda s: print(s, flush=True))
        else:
            creds, where = _create_account(settings, args.name)
            print(f"account id: {creds.account_id}\npasscode:   {creds.passcode}\nwrite key:  {creds.write_key}")
            print(f"Created in {where}.")
            print("Keep the passcode and write key: Kairos stores only their hashes and cannot show them again.")
    except (ConfigError, AccountError) as exc:
        print(f"kairos: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
