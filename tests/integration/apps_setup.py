"""The apps file every integration run uses: the default app, a second app with credentials of its
own, and a broken one, with keys generated at run time (docs/apps.md).

The workers, the sandbox and the test process all read it (NOTIFIER_APPS_FILE); the default app
is the NOTIFIER_* settings as before, so every test that names no app runs as a one-app setup.
"""
from __future__ import annotations

from pathlib import Path

from sandbox.keys import ensure_ec_key, ensure_fcm_service_account

COURIER = {"app": "courier", "key_id": "COURIERKY1", "team_id": "COURIERTM1", "topic": "com.example.courier",
           "project_id": "courier-project", "email_from": "dispatch@courier.example.com",
           "sms_from": "+15005550123"}
BROKEN = {"app": "broken", "key_id": "BROKENKEY1", "team_id": "BROKENTM01", "topic": "com.example.broken",
          "project_id": "broken-project"}


def write_apps_file(var_dir: Path, fcm_token_port: str) -> Path:
    """Make the courier app's keys (the broken app's stay missing) and the apps file naming both."""
    directory = var_dir / "apps"
    ensure_ec_key(directory / "courier-apns.p8")
    ensure_fcm_service_account(directory / "courier-fcm.json", f"https://127.0.0.1:{fcm_token_port}/token",
                               project_id=COURIER["project_id"])
    path = directory / "apps.toml"
    path.write_text(f"""\
# Written by tests/integration/apps_setup.py for this run. Paths are relative to this file.
[apps.courier]
apns = {{ key_id = "{COURIER['key_id']}", team_id = "{COURIER['team_id']}", key_file = "courier-apns.p8", \
topic = "{COURIER['topic']}", environment = "sandbox" }}
fcm = {{ project_id = "{COURIER['project_id']}", credentials_file = "courier-fcm.json" }}
email = {{ from = "{COURIER['email_from']}", from_name = "Courier" }}
sms = {{ from = "{COURIER['sms_from']}" }}

# Its key files were never made: its deliveries fail `misconfigured: broken …`, nobody else's.
[apps.broken]
apns = {{ key_id = "{BROKEN['key_id']}", team_id = "{BROKEN['team_id']}", key_file = "missing-apns.p8", \
topic = "{BROKEN['topic']}" }}
fcm = {{ project_id = "{BROKEN['project_id']}", credentials_file = "missing-fcm.json" }}
""")
    return path
