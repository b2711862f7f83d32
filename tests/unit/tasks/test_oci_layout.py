"""The OCI layout's parts on their own: a base's platform picked, a layer refusing links."""

from __future__ import annotations

import pytest

from tasks.oci_layout import (
    BlobMismatch,
    ImageError,
    Layout,
    check_base,
    model_layer,
    pick_platform,
)

INDEX = {
    "manifests": [
        {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
        {
            "digest": "sha256:arm",
            "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
        },
        {"digest": "sha256:att", "platform": {"os": "unknown", "architecture": "unknown"}},
    ]
}


def test_multi_arch_base_picks_the_platform_or_names_those_available():
    assert pick_platform(INDEX, "linux/amd64", "b") == "sha256:amd"
    assert pick_platform(INDEX, "linux/arm64", "b") == "sha256:arm"
    assert pick_platform(INDEX, "linux/arm64/v8", "b") == "sha256:arm"
    with pytest.raises(
        ImageError, match=r"without linux/s390x \(it has linux/amd64, linux/arm64/v8\)"
    ):
        pick_platform(INDEX, "linux/s390x", "b")


def test_layer_refuses_symlinks(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "link").symlink_to("/etc/passwd")
    with pytest.raises(ImageError, match="only plain files"):
        model_layer(tmp_path / "m", "/models", 0)


def test_a_base_for_another_platform_or_without_a_command_is_refused():
    good = {"os": "linux", "architecture": "amd64", "config": {"Cmd": ["uvicorn"]}}
    check_base(good, "linux/amd64", "r/b@sha256:1")
    with pytest.raises(ImageError, match="is for linux/arm64, not linux/amd64"):
        check_base({**good, "architecture": "arm64"}, "linux/amd64", "r/b@sha256:1")
    with pytest.raises(ImageError, match="has no command"):
        check_base({**good, "config": {"Env": ["A=1"]}}, "linux/amd64", "r/b@sha256:1")


def test_pulled_blobs_are_checked_against_their_digest_before_any_is_kept(tmp_path):
    pulled = Layout(tmp_path / "pull").init()
    good = pulled.put(b"good bytes")
    bad = pulled.put(b"bytes as the registry sent them")
    pulled.path(bad).write_bytes(b"other bytes")  # what a faulty registry or proxy serves
    store = Layout(tmp_path / "store").init()
    with pytest.raises(BlobMismatch, match=f"registry http://r:5000 served blob {bad}") as err:
        store.adopt(pulled.root, "http://r:5000")
    assert err.value.digest == bad and err.value.registry == "http://r:5000"
    assert not store.has(good) and not store.has(bad)  # nothing of the pull was kept
