"""Run the test identity provider: `python -m tests.tenants.oidc_provider --port P --config JSON`.

JSON: {"client_id", "client_secret", "redirect_uri", "users": [{"username", "password",
"email", "groups": [...], "email_verified" (default true)}]}. It migrates its SQLite database, registers the gateway as a
confidential client (authorization code, RS256, consent skipped) and the users, then
serves on 127.0.0.1:P until stopped.
"""

import argparse
import json
import os

import django
from django.core.management import call_command


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    config = json.loads(args.config)
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.tenants.oidc_provider.settings"
    django.setup()
    call_command("migrate", verbosity=0)
    setup(config)
    call_command("runserver", f"127.0.0.1:{args.port}", use_reloader=False, use_threading=True, skip_checks=True)


def setup(config: dict) -> None:
    from django.contrib.auth.models import Group, User
    from oauth2_provider.models import Application

    from .validator import UNVERIFIED

    Application.objects.update_or_create(client_id=config["client_id"], defaults={
        "name": "LLM gateway", "client_secret": config["client_secret"],
        "client_type": Application.CLIENT_CONFIDENTIAL,
        "authorization_grant_type": Application.GRANT_AUTHORIZATION_CODE,
        "redirect_uris": config["redirect_uri"], "algorithm": Application.RS256_ALGORITHM,
        "skip_authorization": True})
    for person in config["users"]:
        user = User.objects.filter(username=person["username"]).first() or User(username=person["username"])
        user.email = person.get("email", "")
        user.set_password(person["password"])
        user.save()
        user.groups.set([Group.objects.get_or_create(name=name)[0] for name in person.get("groups", [])])
        if not person.get("email_verified", True):
            UNVERIFIED.add(person["username"])


if __name__ == "__main__":
    main()
