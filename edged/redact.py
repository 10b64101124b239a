"""Credentials out of text: everything edged logs or shows passes through :func:`scrub`."""

from __future__ import annotations

import re

# Greedy up to the last '@' before whitespace: over-redacting a rare URL with
# '@' in its path is better than leaking a password that contains '/'.
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*):(\S*)@")


# Cameras that take their credentials in the query string (Foscam's
# CGIStream.cgi?usr=admin&pwd=..., tokens in HLS URLs): the value, up to the
# next '&', '#' or whitespace. A value that is already '***' stays as it is,
# with what follows it: text is scrubbed again on its way to the log, and
# "?pwd=***: authentication failed" must not lose its ': '.
_QUERY_SECRET = re.compile(
    r"([?&;](?:pwd|pass|passwd|password|passphrase|secret|token|auth|key|apikey|api_key|"
    r"access_token|sig|signature)=)(?:\*\*\*(?=[:;,.)]?(?:[&#\s]|$))|[^&#\s]*)",
    re.IGNORECASE,
)


def scrub(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URL in it
    replaced by ``***`` (the user name is kept), and so the values of query
    parameters named like secrets (``pwd=``, ``password=``, ``token=`` ...).
    Use it on anything logged."""
    return _QUERY_SECRET.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", text))


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``; the same as :func:`scrub`."""
    return scrub(url)
