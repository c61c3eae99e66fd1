"""A local Google OAuth 2.0 token endpoint that issues ID tokens to service accounts.

It speaks the wire API google-auth uses for a service-account key file
(``GOOGLE_APPLICATION_CREDENTIALS``): ``POST /token`` with ``grant_type=
urn:ietf:params:oauth:grant-type:jwt-bearer`` and an ``assertion`` JWT signed by the
account's key, whose ``target_audience`` names the service. The answer is
``{"id_token": JWT}``, signed by the stand-in's own key, with ``aud`` the target
audience, ``iss`` ``https://accounts.google.com``, ``email`` the account, and an hour
to live (``lifetime_s``). ``verifier(audience)`` checks such a token as Cloud Run's IAM
does (signature, audience, expiry), for the Cloud Run stand-in.

``service_account()`` makes a key file's contents for a new account whose ``token_uri``
is this endpoint: the real credential chain, pointed here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt, jwt

from infergw.gateway.lifecycle import AsyncService
from infergw.gateway.sites import AppSite

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_AUDIENCE = "https://oauth2.googleapis.com/token"  # what google-auth signs for
ISSUER = "https://accounts.google.com"


def _rsa_pem() -> tuple[str, str]:
    """A new RSA key: (private PKCS#8 PEM, public PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private.decode(), public.decode()


class GoogleTokenStandIn(AsyncService):
    """``async with GoogleTokenStandIn() as google: info = google.service_account()``."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, lifetime_s: float = 3600.0):
        self.host = host
        self.port = port
        self.lifetime_s = lifetime_s
        self.issued = 0  # ID tokens handed out
        self._signing_key, self._public_key = _rsa_pem()
        self._accounts: dict[str, str] = {}  # email -> public key PEM
        self._site: AppSite | None = None

    @property
    def token_uri(self) -> str:
        if self._site is None:
            raise RuntimeError("the token stand-in is not started")
        return f"{self._site.url}/token"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self._token)
        self._site = AppSite(app, self.host, self.port)
        await self._site.start()

    async def stop(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    def service_account(
        self, email: str = "gateway@infergw-local.iam.gserviceaccount.com"
    ) -> dict[str, Any]:
        """A service-account key file's contents (``type: service_account``) for a new
        account that this endpoint knows."""
        private, public = _rsa_pem()
        self._accounts[email] = public
        return {
            "type": "service_account",
            "project_id": "infergw-local",
            "private_key_id": f"key-{len(self._accounts)}",
            "private_key": private,
            "client_email": email,
            "client_id": str(len(self._accounts)),
            "token_uri": self.token_uri,
        }

    def verifier(self, audience: str) -> Callable[[str], bool]:
        """Whether a bearer token is an ID token of ours for ``audience``, unexpired."""

        def verify(token: str) -> bool:
            try:
                jwt.decode(token, certs=self._public_key, audience=audience)
            except ValueError:  # google-auth's MalformedError and bad signatures
                return False
            return True

        return verify

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER or not isinstance(form.get("assertion"), str):
            return _oauth_error("unsupported_grant_type", "Invalid grant_type.")
        assertion = str(form["assertion"])
        try:
            unverified = jwt.decode(assertion, verify=False)
            public = self._accounts[str(unverified.get("iss"))]
            claims = jwt.decode(assertion, certs=public, audience=ASSERTION_AUDIENCE)
        except (ValueError, KeyError):
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        audience = claims.get("target_audience")
        if not isinstance(audience, str) or not audience:
            return _oauth_error("invalid_request", "Invalid target_audience.")
        now = int(time.time())
        token = jwt.encode(
            crypt.RSASigner.from_string(self._signing_key, "stand-in"),
            {
                "iss": ISSUER,
                "aud": audience,
                "sub": claims["iss"],
                "email": claims["iss"],
                "iat": now,
                "exp": now + int(self.lifetime_s),
            },
        )
        self.issued += 1
        return web.json_response({"id_token": token.decode()})


def _oauth_error(error: str, description: str) -> web.Response:
    """An OAuth 2.0 error answer (RFC 6749 5.2), as Google's endpoint gives it."""
    return web.json_response({"error": error, "error_description": description}, status=400)
