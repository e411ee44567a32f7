"""Settings of the demo library. Everything that differs between a laptop, the e2e test and a
deployment comes from the environment (see README.md)."""

import os
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = BASE_DIR.parent.parent


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-not-secret-" + "x" * 40)
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "library",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "librarysite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "librarysite.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
# The browser client is served straight from the repository: /static/ferrocast.js.
STATICFILES_DIRS = [REPO_DIR / "clients" / "js" / "src"]

if sys.argv[1:2] == ["test"]:  # seed users quickly in tests
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

# ---------------------------------------------------------------------------------------------
# ferrocast: must match examples/django-library/ferrocast.toml (or the FERROCAST_* variables the
# node was started with).
FERROCAST = {
    # server API, called by Django (publish, broadcast, presence_stats, ...)
    "API_URL": os.environ.get("FERROCAST_API_URL", "http://127.0.0.1:8180"),
    "API_KEY": os.environ.get("FERROCAST_API_KEY", "library-demo-api-key"),
    # HS256 secret of client tokens (auth.token_secret)
    "TOKEN_SECRET": os.environ.get("FERROCAST_TOKEN_SECRET", "library-demo-token-secret"),
    "TOKEN_TTL": env_int("FERROCAST_TOKEN_TTL", 3600),
    # what the browser connects to; empty = ws://<host of the page>:<port of API_URL>/ws
    "WS_URL": os.environ.get("FERROCAST_WS_URL", ""),
    "TIMEOUT": float(os.environ.get("FERROCAST_TIMEOUT", "3")),
    # HMAC key of the node's webhooks (webhooks.secret): POST /ferrocast/webhook/ checks it
    "WEBHOOK_SECRET": os.environ.get("FERROCAST_WEBHOOK_SECRET", "library-demo-webhook-secret"),
}

# Digest e-mails of the notices a reader missed while offline (library/digests.py): sent by
# `manage.py send_digests` (cron; run.sh runs it in a loop) once a reader has been offline for
# DIGEST_DELAY_SECONDS. The console backend prints them (run.sh: in its terminal).
DIGEST_DELAY_SECONDS = env_int("DIGEST_DELAY_SECONDS", 300)
EMAIL_BACKEND = os.environ.get("DJANGO_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = "Library <library@library.example>"
SITE_URL = os.environ.get("SITE_URL", "http://127.0.0.1:8000")

# Loan period: 14 days by default; the demo and the e2e test set a few seconds.
LOAN_SECONDS = env_int("LOAN_SECONDS", 14 * 24 * 3600)
LEADERBOARD_SIZE = 5

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "library": {"handlers": ["console"], "level": "INFO"},
        # publish_on_commit(robust=True) logs a publication that failed after the commit here
        "ferrocast": {"handlers": ["console"], "level": "WARNING"},
    },
}
