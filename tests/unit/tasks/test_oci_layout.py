"""The OCI layout's parts on their own: a base's platform picked, a layer refusing links."""

from __future__ import annotations

import pytest

from tasks.oci_layout import ImageError, model_layer, pick_platform

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
