#!/usr/bin/env python3
"""Signs a demo login in to a running `clinic serve --demo` and prints its session cookie.

Usage: signin.py BASE_URL USERNAME PASSWORD
Staff and partner accounts must enroll TOTP at first sign-in (as loadtest/src/api.rs does):
the enrollment is confirmed with a code computed here (RFC 6238, SHA-1, 6 digits, 30 s), which
also counts as the session's MFA check, so sensitive routes pass their step-up for a while.
Standard library only.
"""
import base64
import hashlib
import hmac
import http.cookiejar
import json
import struct
import sys
import time
import urllib.request


def totp(secret_b32: str, now: float) -> str:
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8), casefold=True)
    digest = hmac.new(key, struct.pack(">Q", int(now) // 30), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    code = (struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{code:06d}"


def main() -> None:
    base, username, password = sys.argv[1:4]
    # The session cookie is Secure; the demo server is plain HTTP on loopback, which browsers
    # (and this script) treat as trustworthy enough to send it to.
    jar = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(secure_protocols=("https", "wss", "http")))
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def post(path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(
            base + path,
            data=json.dumps(body or {}).encode() if body is not None else b"",
            headers={"content-type": "application/json"} if body is not None else {},
            method="POST",
        )
        with opener.open(req, timeout=30) as resp:
            return json.loads(resp.read() or b"{}")

    login = post("/api/v1/auth/login", {"clinic": "demo", "username": username, "password": password})
    if login["stage"] == "enroll_only":
        secret = post("/api/v1/auth/mfa/enroll")["secret"]
        post("/api/v1/auth/mfa/enroll/confirm", {"code": totp(secret, time.time())})
    elif login["stage"] != "full":
        sys.exit(f"{username}: sign-in stopped at stage {login['stage']} (use a fresh demo server)")
    cookie = next((c for c in jar if c.name == "__Host-clinic_session"), None)
    if cookie is None:
        sys.exit(f"{username}: no session cookie")
    print(f"{cookie.name}={cookie.value}")


if __name__ == "__main__":
    main()
