"""The same inputs give the same image, in both flows, and verify-reproducible
says where two builds first differ when they do not."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.conftest import assert_one_line_error, invoke
from tests.integration.conftest import identity_tag


def test_load_flow_is_reproducible_from_scratch(web_image):
    outcome = invoke("verify-reproducible")
    assert outcome.code == 0, outcome.stderr[-3000:]
    first, second = outcome.stdout.split()[:2]
    assert first == second
    assert "reproducible: both builds gave the same image" in outcome.stdout


def test_complete_flow_is_reproducible_from_scratch(web_image):
    outcome = invoke("verify-reproducible", "--complete")
    assert outcome.code == 0, outcome.stderr[-3000:]
    first, second = outcome.stdout.split()[:2]
    assert first == second


def test_an_unreproducible_build_is_named_down_to_the_file(cache_image):
    outcome = invoke("verify-reproducible", env={"INVOKE_WEB_IMAGES": "tests/fixtures/broken/unreproducible.nix"})
    assert_one_line_error(outcome, "not reproducible: layer", "-stamp/stamp differs in content")


def tree(root: Path) -> dict[str, tuple]:
    """Every file of a root filesystem: type, mode, owner, mtime, content or link target."""
    entries = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            info = path.lstat()
            body = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else None
            entries[str(path.relative_to(root))] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode),
                                                    info.st_uid, info.st_gid, int(info.st_mtime), body)
    return entries


def test_both_flows_give_the_same_files(web_tag, tmp_path):
    assert invoke("extract", web_tag, "--to", f"rootfs:{tmp_path / 'load'}").code == 0
    try:
        complete = invoke("build-web", "--complete")
        assert complete.code == 0, complete.stderr[-2000:]
        assert invoke("extract", identity_tag(complete), "--to", f"rootfs:{tmp_path / 'complete'}").code == 0
    finally:
        assert invoke("build-web").code == 0  # web:latest back to the load flow's image, for whoever uses it next
    load, whole = tree(tmp_path / "load"), tree(tmp_path / "complete")
    assert whole.pop("run")[0] == stat.S_IFLNK  # the complete flow's entry point
    assert load == whole
