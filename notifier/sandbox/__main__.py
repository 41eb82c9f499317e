"""Run the sandbox: ``python -m notifier.sandbox [--apns-port 8791 ...]``.

Every option also reads NOTIFIER_SANDBOX_<OPTION> from the environment
(e.g. NOTIFIER_SANDBOX_APNS_PORT); a command-line option wins.
"""

from __future__ import annotations

import argparse
import logging
import sys

from notifier.sandbox.app import SandboxConfig, run


def parse_args(argv: list[str] | None = None) -> SandboxConfig:
    """Build the sandbox config from the environment and the command line."""
    defaults = SandboxConfig()
    parser = argparse.ArgumentParser(prog="python -m notifier.sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--host", help=f"address to listen on (default {defaults.host})")
    parser.add_argument("--control-port", type=int, help=f"control API port (default {defaults.control_port}; 0 = any)")
    parser.add_argument("--apns-port", type=int, help=f"APNs HTTP/2 port (default {defaults.apns_port}; 0 = any)")
    parser.add_argument("--cert-path", help=f"where to write the CA certificate clients trust (default {defaults.cert_path})")
    parser.add_argument(
        "--apns-key-path", help=f"APNs signing key, EC P-256 PKCS8 PEM, created if absent (default {defaults.apns_key_path})"
    )
    parser.add_argument("--apns-key-id", help=f"JWT kid the sandbox accepts (default {defaults.apns_key_id})")
    parser.add_argument("--apns-team-id", help=f"JWT iss the sandbox accepts (default {defaults.apns_team_id})")
    parser.add_argument("--apns-topic", help=f"the app's bundle id, the apns-topic accepted (default {defaults.apns_topic})")
    parser.add_argument("--max-records", type=int, help=f"accepted requests kept for inspection (default {defaults.max_records})")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=args.pop("log_level").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return SandboxConfig.from_env(**args)


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv)
    except ValueError as exc:
        print(f"notifier sandbox: {exc}", file=sys.stderr)
        return 2
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
