"""Python client for the ferrocast server API (publish, broadcast, presence, history, ...)
and client-token minting, for backends such as Django views and Celery tasks.

    from ferrocast import Client, make_token
    fc = Client("http://127.0.0.1:8080", api_key="...")
    fc.publish("user:17", {"text": "hi"})
    token = make_token(secret, user_id=17, ttl=3600)

    with transaction.atomic():                 # Django: sent after the commit, never on rollback
        ...
        fc.publish_on_commit("user:17", {"text": "borrowed"})

    payload = webhooks.verify(request.body, request.headers.get(webhooks.SIGNATURE_HEADER), secret)
"""

from .aio import AsyncClient
from .client import Client
from .errors import FerrocastError, FerrocastUnavailable
from .token import decode_token, make_token
from . import webhooks

__all__ = [
    "AsyncClient",
    "Client",
    "FerrocastError",
    "FerrocastUnavailable",
    "decode_token",
    "make_token",
    "webhooks",
]
__version__ = "0.1.0"
