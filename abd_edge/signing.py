"""Signed bundle versions: ed25519 signatures over the manifest, which hashes every file.

A manifest lists the size and sha256 of every file of a version, so it
detects damage but not forgery: whoever can rewrite the files can rewrite
the manifest too. A signature closes that gap. The exporter (or a device,
for the versions it makes itself) signs the sha256 of the manifest's
canonical JSON (``json.dumps(manifest, sort_keys=True, separators=(",", ":"))``)
with an ed25519 private key and stores the result in ``signature.json``
beside ``manifest.json``; a device opened with ``trusted_keys`` refuses any
version that is unsigned, signed by another key, or whose manifest changed
after signing. See docs/DEPLOYMENT.md ("Signed bundles") for what this
protects against and what it does not.

Needs ``cryptography`` (``pip install 'abd-edge[sign]'``), imported only
when keys are used; no torch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

from .bundle_format import SIGNATURE, read_json, write_json
from .errors import BundleSignatureError, ConfigError
from .extras import require

ALGORITHM = "ed25519"

#: What may be given as a key: a path to a PEM file, PEM text or bytes, 32 raw bytes, or a cryptography key object.
KeyLike = Union[str, os.PathLike, bytes, Any]


def _crypto() -> Any:
    require("cryptography", feature="bundle signing")
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519


def manifest_digest(manifest: Mapping[str, Any]) -> bytes:
    """sha256 of the manifest's canonical JSON: the bytes that get signed."""
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).digest()


def _raw_public(public: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public: Any) -> str:
    """``sha256:<hex>`` of the raw 32-byte public key; ``key_id`` is its first 16 hex digits."""
    return "sha256:" + hashlib.sha256(_raw_public(public)).hexdigest()


def key_id(public: Any) -> str:
    return fingerprint(public)[7:23]


def _read_key_bytes(key: KeyLike) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, str) and key.lstrip().startswith("-----BEGIN"):
        return key.encode("ascii")
    path = Path(key)
    if not path.is_file():
        raise ConfigError(f"key file {path} does not exist; create one with: abd-edge keygen {path}")
    return path.read_bytes()


def load_private_key(key: KeyLike) -> Any:
    """An ed25519 private key from a PEM file (written by :func:`generate_key`), PEM bytes, or a key object."""
    ed25519 = _crypto()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    from cryptography.hazmat.primitives import serialization

    data = _read_key_bytes(key)
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{key!r} is not an unencrypted PEM private key: {e}") from None
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{key!r} holds a {type(private).__name__}; expected an ed25519 key (abd-edge keygen)")
    return private


def load_public_key(key: KeyLike) -> Any:
    """An ed25519 public key from a path, PEM, 32 raw bytes, a public key object, or a private key (its public half)."""
    ed25519 = _crypto()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.public_key()
    if isinstance(key, bytes) and len(key) == 32:
        return ed25519.Ed25519PublicKey.from_public_bytes(key)
    from cryptography.hazmat.primitives import serialization

    data = _read_key_bytes(key)
    try:
        public = serialization.load_pem_public_key(data)
    except ValueError:
        try:  # a private key file: trust its public half
            return load_private_key(data).public_key()
        except ConfigError:
            raise ConfigError(f"{key!r} is not a PEM ed25519 public key") from None
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise ConfigError(f"{key!r} holds a {type(public).__name__}; expected an ed25519 public key")
    return public


def generate_key(path: str | os.PathLike[str], *, overwrite: bool = False) -> dict[str, str]:
    """Write a new private key to ``path`` (mode 0600) and its public key to ``path.pub``; return their ids."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    private_path = Path(path)
    public_path = private_path.with_name(private_path.name + ".pub")
    for p in (private_path, public_path):
        if p.exists() and not overwrite:
            raise ConfigError(f"{p} already exists; refusing to overwrite a key (pass --force to replace it)")
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = private.public_key()
    public_path.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return {"private_key": str(private_path), "public_key": str(public_path), "key_id": key_id(public),
            "fingerprint": fingerprint(public)}


def sign_version(directory: str | os.PathLike[str], manifest: Mapping[str, Any], key: KeyLike) -> dict[str, Any]:
    """Sign ``manifest`` (the one just written to ``directory``) and write ``signature.json`` there."""
    private = load_private_key(key)
    public = private.public_key()
    digest = manifest_digest(manifest)
    doc = {
        "algorithm": ALGORITHM,
        "key_id": key_id(public),
        "public_key_fingerprint": fingerprint(public),
        "public_key": base64.b64encode(_raw_public(public)).decode("ascii"),
        "manifest_sha256": digest.hex(),
        "signature": base64.b64encode(private.sign(digest)).decode("ascii"),
    }
    write_json(Path(directory) / SIGNATURE, doc)
    return doc


def read_signature(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    p = Path(directory) / SIGNATURE
    if not p.is_file():
        return None
    doc = read_json(p)
    if not isinstance(doc, dict) or doc.get("algorithm") != ALGORITHM:
        raise BundleSignatureError(f"{p} is not an {ALGORITHM} signature document")
    return doc


def verify_version(directory: str | os.PathLike[str], manifest: Mapping[str, Any], trusted_keys: Iterable[KeyLike]) -> dict[str, Any]:
    """Check that ``manifest`` is signed by one of ``trusted_keys``; raise :class:`BundleSignatureError` if not."""
    d = Path(directory)
    trusted = {fingerprint(k): k for k in (load_public_key(t) for t in trusted_keys)}
    if not trusted:
        raise ConfigError("trusted_keys is empty; give at least one public key (or None to skip signature checks)")
    doc = read_signature(d)
    if doc is None:
        raise BundleSignatureError(
            f"{d} is unsigned (no {SIGNATURE}) but signatures are required; export it with --sign-key "
            "(or open without trusted_keys)"
        )
    fp = doc.get("public_key_fingerprint")
    if fp not in trusted:
        raise BundleSignatureError(
            f"{d} is signed by key {doc.get('key_id')!r} ({fp}), which is not among the trusted keys "
            f"{sorted(k[7:23] for k in trusted)}"
        )
    digest = manifest_digest(manifest)
    from cryptography.exceptions import InvalidSignature

    try:
        trusted[fp].verify(base64.b64decode(doc["signature"], validate=True), digest)
    except (InvalidSignature, KeyError, ValueError, TypeError):
        raise BundleSignatureError(
            f"the signature in {d / SIGNATURE} does not match its manifest (the manifest was changed after "
            f"signing, or the signature was forged)"
        ) from None
    return doc


def describe_signature(directory: str | os.PathLike[str], manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """For ``info``: who signed, and whether the signature matches the key it names (not whether to trust it)."""
    try:
        doc = read_signature(directory)
    except BundleSignatureError as e:
        return {"error": str(e)}
    if doc is None:
        return None
    out = {k: doc.get(k) for k in ("algorithm", "key_id", "public_key_fingerprint")}
    out["manifest_matches"] = doc.get("manifest_sha256") == manifest_digest(manifest).hex()
    try:
        public = load_public_key(base64.b64decode(doc["public_key"]))
        out["valid"] = bool(out["manifest_matches"]) and fingerprint(public) == doc.get("public_key_fingerprint")
        if out["valid"]:
            verify_version(directory, manifest, [public])
    except BundleSignatureError:
        out["valid"] = False
    except Exception as e:  # noqa: BLE001 - info reports, it does not fail
        out["valid"] = None
        out["note"] = f"not checked: {e}"
    return out
