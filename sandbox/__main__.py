"""Run the sandbox: ``python -m sandbox [--apns-port 8791 ...]``.

Every option also reads NOTIFIER_SANDBOX_<OPTION> from the environment
(e.g. NOTIFIER_SANDBOX_APNS_PORT); a command-line option wins.
"""

from __future__ import annotations

import argparse
import sys

from notifier.ops import redaction
from sandbox.app import SandboxConfig, run


def parse_args(argv: list[str] | None = None, *, prog: str = "python -m sandbox", description: str | None = None,
               parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> SandboxConfig:
    """Build the sandbox config from the environment and the command line."""
    d = SandboxConfig()
    parser = parser_class(prog=prog, description=description or __doc__.splitlines()[0])
    option = parser.add_argument
    option("--host", help=f"address the provider servers listen on (default {d.host})")
    option("--control-host", help=f"address of the control API (default {d.control_host}); beyond loopback it "
           "needs a token")
    option("--control-port", type=int, help=f"control API port (default {d.control_port}; 0 = any free port)")
    option("--control-token", help="bearer token the control API requires (better: NOTIFIER_SANDBOX_CONTROL_TOKEN, "
           "which no process listing shows)")
    option("--apns-port", type=int, help=f"APNs HTTP/2 port (default {d.apns_port}; 0 = any free port)")
    option("--tls-names", help="more host names for the TLS certificate, comma-separated (e.g. sandbox)")
    option("--cert-path", help=f"where to write the CA certificate clients must trust (default {d.cert_path})")
    option("--apns-key-path", help=f"APNs signing key, EC P-256 PKCS8 PEM, made if absent (default {d.apns_key_path})")
    option("--apns-key-id", help=f"the JWT kid accepted (default {d.apns_key_id})")
    option("--apns-team-id", help=f"the JWT iss accepted (default {d.apns_team_id})")
    option("--apns-topic", help=f"the app's bundle id, the apns-topic accepted (default {d.apns_topic})")
    option("--max-records", type=int, help=f"accepted requests kept for inspection (default {d.max_records})")
    option("--sendgrid-port", type=int, help=f"SendGrid API (HTTP/1.1) port (default {d.sendgrid_port}; 0 = any)")
    option("--sendgrid-api-key", help="the SendGrid API key accepted (default the sandbox's SG.sandbox)")
    option("--sendgrid-webhook-key-path", help=f"Event Webhook signing key, made if absent "
           f"(default {d.sendgrid_webhook_key_path})")
    option("--sendgrid-webhook-public-key-path", help=f"where to write its verification key, base64 DER "
           f"(default {d.sendgrid_webhook_public_key_path})")
    option("--sendgrid-event-webhook-url", help=f"where receipts post SendGrid events, and the only origin "
           f"they post Twilio callbacks to (default {d.sendgrid_event_webhook_url})")
    option("--twilio-port", type=int, help=f"Twilio API (HTTP/1.1) port (default {d.twilio_port}; 0 = any)")
    option("--twilio-account-sid", help=f"the account SID accepted (default {d.twilio_account_sid})")
    option("--twilio-auth-token", help="the auth token accepted, and the key of status callback signatures")
    option("--twilio-from", help=f"the account's sender number (default {d.twilio_from})")
    option("--twilio-messaging-service-sid", help=f"the account's messaging service "
           f"(default {d.twilio_messaging_service_sid})")
    option("--smtp-port", type=int, help=f"SMTP (STARTTLS, AUTH) port (default {d.smtp_port}; 0 = any)")
    option("--smtp-username", help=f"the SMTP AUTH user accepted (default {d.smtp_username})")
    option("--smtp-password", help="the SMTP AUTH password accepted (default the sandbox's)")
    option("--fcm-port", type=int, help=f"FCM v1 API (HTTP/2, TLS) port (default {d.fcm_port}; 0 = any free port)")
    option("--fcm-token-port", type=int, help=f"OAuth2 token endpoint (HTTPS) port (default {d.fcm_token_port}; "
           "0 = any free port)")
    option("--fcm-project-id", help=f"the Firebase project id accepted (default {d.fcm_project_id})")
    option("--fcm-credentials-path", help=f"service-account key JSON, made if absent, its token_uri set to the "
           f"sandbox's (default {d.fcm_credentials_path})")
    option("--fcm-token-ttl-s", type=int, help=f"access token lifetime, expires_in (default {d.fcm_token_ttl_s})")
    option("--apps-file", help="the notifier's apps file (NOTIFIER_APPS_FILE): each app's APNs key and FCM "
           "service account are trusted too, and its requests checked against its own topic and project")
    option("--webpush-port", type=int, help=f"Web Push service (HTTP/2, TLS) port (default {d.webpush_port}; "
           "0 = any free port)")
    option("--webpush-origin", help="the origin minted endpoints name, as senders reach the sandbox "
           "(default https://<host>:<port>)")
    option("--vapid-key-path", help=f"VAPID key (EC P-256 PEM) minted subscriptions are bound to, made if absent "
           f"(default {d.vapid_key_path})")
    option("--log-level", default="INFO", help="logging level")
    args = vars(parser.parse_args(argv))
    redaction.basic_config(args.pop("log_level"))
    return SandboxConfig.from_env(**args)


def main(argv: list[str] | None = None, **parser_options: object) -> int:
    try:
        config = parse_args(argv, **parser_options)
    except ValueError as exc:
        print(f"notifier sandbox: error: {exc}", file=sys.stderr)
        return 2
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
