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
    d = SandboxConfig()
    parser = argparse.ArgumentParser(prog="python -m notifier.sandbox", description=__doc__.splitlines()[0])
    option = parser.add_argument
    option("--host", help=f"address to listen on (default {d.host})")
    option("--control-port", type=int, help=f"control API port (default {d.control_port}; 0 = any free port)")
    option("--apns-port", type=int, help=f"APNs HTTP/2 port (default {d.apns_port}; 0 = any free port)")
    option("--cert-path", help=f"where to write the CA certificate clients must trust (default {d.cert_path})")
    option("--apns-key-path", help=f"APNs signing key, EC P-256 PKCS8 PEM, made if absent (default {d.apns_key_path})")
    option("--apns-key-id", help=f"the JWT kid accepted (default {d.apns_key_id})")
    option("--apns-team-id", help=f"the JWT iss accepted (default {d.apns_team_id})")
    option("--apns-topic", help=f"the app's bundle id, the apns-topic accepted (default {d.apns_topic})")
    option("--max-records", type=int, help=f"accepted requests kept for inspection (default {d.max_records})")
    option("--log-level", default="INFO", help="logging level (default INFO)")
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
