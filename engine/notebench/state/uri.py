"""URIs of the services Notebench keeps state in, and how they are shown: never with their credentials.

Every URI a person or a log can see goes through `mask_uri` first: `postgresql+psycopg://nb:s3cret@db/nb` is shown
as `postgresql+psycopg://nb:***@db/nb`, and secrets in the query string (`?password=...`, `?token=...`) likewise.
Prefer keeping secrets out of URIs altogether: PostgreSQL clients read `PGPASSWORD` or `~/.pgpass`, MLflow's
client reads `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD`.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "is_masked", "mask_uri", "redact", "scheme", "secrets_of", "sqlalchemy_url"]

MASK = "***"
SECRET_KEYS = {"password", "pass", "passwd", "pwd", "secret", "token", "access_token", "api_key", "apikey", "key",
               "sslpassword", "sas_token", "sig"}  # query parameters whose values are credentials
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]+):")  # two characters at least: C:\\ is a drive
# user:password@host; a password may hold a raw '@' (people write them unescaped): the host is after the last one
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:@/?#]*):(?P<password>[^/?#]*)@"
                       r"(?=[^@/?#]*(?:[/?#]|$))")


def mask_uri(uri: str | None) -> str:
    """`uri` with the password of its user info and the values of secret query parameters replaced by `***`."""
    if not uri:
        return uri or ""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", uri, count=1)
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if not parts.query:
        return text
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if not any(k.lower() in SECRET_KEYS for k, _ in pairs):
        return text
    query = urlencode([(k, MASK if k.lower() in SECRET_KEYS else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(query=query))


def is_masked(uri: str | None) -> bool:
    """True when `uri` was shown through `mask_uri` and lost a secret (it cannot be used to connect)."""
    return bool(uri) and MASK in uri


def secrets_of(uri: str | None) -> list[str]:
    """The secret strings inside `uri` (its password, secret query values), to scrub from messages."""
    if not uri:
        return []
    found = [m["password"] for m in [_USERINFO.match(uri)] if m and m["password"]]
    try:
        found += [v for k, v in parse_qsl(urlsplit(uri).query) if k.lower() in SECRET_KEYS and v]
    except ValueError:
        pass
    return found


def redact(text: str, *uris: str | None) -> str:
    """`text` (an error message, a log line) with every secret of `uris` and every full `uri` replaced."""
    for uri in uris:
        if uri:
            text = text.replace(uri, mask_uri(uri))
            for secret in secrets_of(uri):
                if len(secret) >= 4:  # shorter ones would garble the text, and protect nothing
                    text = text.replace(secret, MASK)
    return text


def scheme(uri: str) -> str:
    """The URI's scheme without its driver (`postgresql+psycopg` -> `postgresql`), lower case; '' for a path."""
    found = _SCHEME.match(uri or "")
    return found["scheme"].split("+", 1)[0].lower() if found else ""


def sqlalchemy_url(uri: str) -> str:
    """`uri` with the psycopg (3) driver named when it is a bare `postgresql://` or `postgres://` URL: SQLAlchemy
    would otherwise look for psycopg2, which is not installed."""
    for bare in ("postgresql://", "postgres://"):
        if uri.startswith(bare):
            return "postgresql+psycopg://" + uri[len(bare):]
    return uri
