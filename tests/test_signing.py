"""Signed bundles: keygen, export --sign-key, open(..., trusted_keys=...), devices signing their own updates."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from abd_edge import runtime
from abd_edge.export.quality import QualityGate
from abd_edge.errors import BundleIntegrityError, BundleSignatureError, ConfigError
from abd_edge.export import export_bundle
from abd_edge.signing import SIGNATURE, generate_key, load_public_key, manifest_digest, sign_version, verify_version
from conftest import fitted_learner, make_task

FAST = runtime.DeviceBudget(epochs=1, dream_iterations=2)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {name: generate_key(d / name) for name in ("server", "device", "stranger")}


@pytest.fixture(scope="module")
def signed_source(tmp_path_factory, keys):
    root = tmp_path_factory.mktemp("signed")
    learner, _, _ = fitted_learner()
    export_bundle(learner, root / "signed", sign_key=keys["server"]["private_key"])
    export_bundle(learner, root / "unsigned")
    return root


@pytest.fixture
def signed(signed_source, tmp_path):
    shutil.copytree(signed_source / "signed", tmp_path / "signed")
    return tmp_path / "signed"


def test_digest_is_sha256_of_canonical_json():
    import hashlib

    m = {"b": [1, 2.5], "a": {"z": None, "y": "é"}}
    expected = hashlib.sha256('{"a":{"y":"é","z":null},"b":[1,2.5]}'.encode()).digest()
    assert manifest_digest(m) == expected


def test_keygen_files_and_modes(keys, tmp_path):
    import os
    import stat

    priv = keys["server"]["private_key"]
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert open(keys["server"]["public_key"]).read().startswith("-----BEGIN PUBLIC KEY-----")
    assert len(keys["server"]["key_id"]) == 16 and keys["server"]["key_id"] != keys["device"]["key_id"]
    with pytest.raises(ConfigError, match="already exists"):
        generate_key(priv)


def test_trusted_signed_bundle_opens(signed, keys):
    vdir = signed / "versions" / "v000001"
    doc = json.loads((vdir / SIGNATURE).read_text())
    assert doc["key_id"] == keys["server"]["key_id"] and doc["algorithm"] == "ed25519"
    assert SIGNATURE not in json.loads((vdir / "manifest.json").read_text())["files"]
    dev = runtime.open(signed, trusted_keys=[keys["server"]["public_key"]])
    assert dev.predict(np.zeros((2, 8, 8, 1), np.uint8)).indices.shape == (2,)
    runtime.open(signed)  # no trusted_keys: signatures are not required


def test_unsigned_or_wrong_signer_is_refused(signed_source, signed, keys):
    with pytest.raises(BundleSignatureError, match="unsigned"):
        runtime.open(signed_source / "unsigned", trusted_keys=[keys["server"]["public_key"]])
    with pytest.raises(BundleSignatureError, match=f"signed by key '{keys['server']['key_id']}'.*not among the trusted"):
        runtime.open(signed, trusted_keys=[keys["stranger"]["public_key"]])


def test_rewritten_manifest_is_refused(signed, keys):
    """An attacker who edits the manifest and fixes its digest still fails the signature."""
    from abd_edge.bundle_format import MANIFEST_DIGEST, manifest_digest

    vdir = signed / "versions" / "v000001"
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["classes"][0]["name"] = "forged"
    (vdir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with pytest.raises(BundleIntegrityError, match="does not match its digest"):
        runtime.open(signed)  # the digest alone catches a careless edit
    (vdir / MANIFEST_DIGEST).write_text(manifest_digest(manifest) + "\n")
    runtime.open(signed)  # integrity is not authenticity: without trusted keys the forgery opens
    with pytest.raises(BundleSignatureError, match="does not match its manifest"):
        runtime.open(signed, trusted_keys=[keys["server"]["public_key"]])
    # ... and re-signing with a key of their own makes it the wrong signer
    sign_version(vdir, manifest, keys["stranger"]["private_key"])
    with pytest.raises(BundleSignatureError, match="not among the trusted"):
        runtime.open(signed, trusted_keys=[keys["server"]["public_key"]])


def test_device_signs_its_own_update(signed, keys):
    server_pub = keys["server"]["public_key"]
    x, y = make_task([2, 3], seed=3)
    frames = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
    unsigned_device = runtime.open(signed, trusted_keys=[server_pub], budget=FAST)
    with pytest.raises(ConfigError, match="no signing_key"):
        unsigned_device.learn_new_classes((frames, y))
    assert unsigned_device.store.versions() == ["v000001"]  # refused before any work
    dev = runtime.open(signed, trusted_keys=[server_pub], signing_key=keys["device"]["private_key"], budget=FAST,
                       quality=QualityGate(enabled=False))  # a 2-iteration update is not what this test judges
    rep = dev.learn_new_classes((frames, y))
    vdir = signed / "versions" / rep.version
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert verify_version(vdir, manifest, [keys["device"]["public_key"]])["key_id"] == keys["device"]["key_id"]
    # another device that trusts only the server refuses the local version ...
    with pytest.raises(BundleSignatureError, match="not among the trusted"):
        runtime.open(signed, trusted_keys=[server_pub])
    # ... and one that trusts both serves it
    assert runtime.open(signed, trusted_keys=[server_pub, keys["device"]["public_key"]]).num_classes == 4


def test_public_key_forms(keys):
    pub = load_public_key(keys["server"]["public_key"])
    assert load_public_key(open(keys["server"]["public_key"], "rb").read()) == pub
    assert load_public_key(keys["server"]["private_key"]) == pub  # a private key file trusts its public half
    with pytest.raises(ConfigError, match="does not exist"):
        load_public_key("/nonexistent/key.pub")
