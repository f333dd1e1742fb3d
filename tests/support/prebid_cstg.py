"""Runs the official Prebid.js UID2 client-side token generation (clients/prebid_cstg/run.mjs)
against an operator's POST /v2/token/client-generate, as a wire-compatibility oracle.

Prebid's code is not in the repository: the one file the runner loads
(libraries/uid2IdSystemShared/uid2IdSystem_shared.js, prebid.js PREBID_VERSION) comes from the npm
registry at first use, with npm's own client (`npm pack`), is checked against the pinned
integrity and is kept in clients/prebid_cstg/cache/ (git-ignored, removed by `make clean`)."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest

from demo.processes import BIN

PREBID_VERSION = "11.36.0"
# npm's dist.integrity for prebid.js@11.36.0 (`npm view prebid.js@11.36.0 dist.integrity`).
PREBID_INTEGRITY = (
    "sha512-uFv6NZEoPQ/z5EUbYMVuV0r+3EXHLL+3ZzbC/+g10QCittFuLG"
    "WhAkxQas9nUcpbj1aBU2P2mVSq1XJuyNtZaw=="
)
PREBID_MEMBER = "package/dist/src/libraries/uid2IdSystemShared/uid2IdSystem_shared.js"

RUNNER_DIR = Path(__file__).resolve().parents[2] / "clients" / "prebid_cstg"
CACHE_DIR = RUNNER_DIR / "cache"


def _node() -> str:
    node = str(BIN / "node") if (BIN / "node").exists() else shutil.which("node")
    if node is None:
        pytest.fail("node is needed (make setup installs it into the venv)")
    return node


def _integrity(tarball: Path) -> str:
    digest = hashlib.sha512(tarball.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def _download(into: Path) -> Path:
    """The prebid.js tarball, fetched with npm (its registry and proxy settings) into `into`."""
    npm = str(BIN / "npm") if (BIN / "npm").exists() else shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed (make setup installs it into the venv)")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [
            npm,
            "pack",
            f"prebid.js@{PREBID_VERSION}",
            "--ignore-scripts",
            "--json",
            "--pack-destination",
            str(into),
            "--loglevel=error",
        ],
        cwd=into,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"npm pack prebid.js@{PREBID_VERSION} failed:\n{result.stderr}")
    filename: str = json.loads(result.stdout)[0]["filename"]
    tarball = into / filename
    if _integrity(tarball) != PREBID_INTEGRITY:
        pytest.fail(f"prebid.js@{PREBID_VERSION}: the tarball's integrity is not the pinned one")
    return tarball


def prebid_file() -> Path:
    """The cached Prebid file, downloaded on first use. Safe across concurrent test processes: one
    downloads under a lock, and the file appears only whole (an atomic rename)."""
    target = CACHE_DIR / f"prebid.js-{PREBID_VERSION}" / "uid2IdSystem_shared.js"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():  # another process got it while this one waited
            return target
        with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
            tarball = _download(Path(tmp))
            with tarfile.open(tarball) as tar:
                member = tar.extractfile(PREBID_MEMBER)
                if member is None:
                    pytest.fail(f"prebid.js@{PREBID_VERSION} has no {PREBID_MEMBER}")
                partial = Path(tmp) / target.name
                partial.write_bytes(member.read())
            os.replace(partial, target)
    return target


def prebid_cstg_generate(
    base_url: str,
    server_public_key: str,
    subscription_id: str,
    origin: str,
    *,
    email: str | None = None,
    phone: str | None = None,
    email_hash: str | None = None,
    phone_hash: str | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    """What Prebid's CSTG makes of the operator at base_url, as a page on `origin` would call it:
    the identity (advertising_token, refresh_token, identity_expires, refresh_expires,
    refresh_from, refresh_response_key) on success, {"status": "optout"} on an opt-out, or
    {"error": message} when Prebid reports an error (the API refused the request, or its answer
    was not what Prebid expects). Give exactly one of email, phone, email_hash, phone_hash; they
    go to Prebid as its uid2IdSystem params do (Prebid normalises an email and hashes it).

    Fails the test when the harness cannot run or Prebid does not attempt the call (e.g. an
    identity Prebid itself refuses; its warnings are in the failure)."""
    identity = {"email": email, "phone": phone, "email-hash": email_hash, "phone-hash": phone_hash}
    given = {name: value for name, value in identity.items() if value is not None}
    if len(given) != 1:
        raise ValueError("give exactly one of email, phone, email_hash, phone_hash")
    options = {
        "prebid": str(prebid_file()),
        "base-url": base_url,
        "server-public-key": server_public_key,
        "subscription-id": subscription_id,
        "origin": origin,
        **given,
    }
    # --name=value: a value may start with "-".
    args = [_node(), "run.mjs", *(f"--{name}={value}" for name, value in options.items())]
    result = subprocess.run(
        args,
        cwd=RUNNER_DIR,
        env={"PATH": str(BIN)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode not in (0, 1):
        pytest.fail(
            f"the Prebid CSTG harness failed ({result.returncode}):\n"
            + result.stdout
            + result.stderr
        )
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert ("error" in answer) == (result.returncode == 1), result.stdout + result.stderr
    return answer
