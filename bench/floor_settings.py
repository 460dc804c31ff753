"""Settings for the benchmark's floor: a bare async Django view that only relays.

The same Django, the same ASGI server and the same upstream client as the
gateway, and nothing else: no middleware, no apps, no database.
"""

SECRET_KEY = "bench-floor-only"  # noqa: S105 (a benchmark fixture, never deployed)
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "bench.floor_app"
DATABASES: dict = {}
USE_TZ = True
