"""Bundles and binary caches read on this machine, without Nix: keys, narinfo
files, the checks a bundle or a cache passes before it is pushed or after it
is pulled, and the tarball's reproducibility."""

from __future__ import annotations

import base64
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from ci import bundles
from ci.core.errors import ConfigError, IntegrityError
from tests.conftest import ROOT

PUBLIC = "ci-1:" + base64.b64encode(bytes(range(32))).decode()
SECRET = "ci-1:" + base64.b64encode(bytes(range(64))).decode()
RUN = "/nix/store/ii4sbl8d87lb57spq470dqjcg72ckl48-run"
BUSYBOX = "/nix/store/9ahivz1d7bq7899fb9ka2db44z3qb8ls-busybox-static"


def narinfo(store_path: str, nar: bytes, references: str = "", sig: str | None = "ci-1:c2lnbmF0dXJl") -> str:
    text = (f"StorePath: {store_path}\nURL: nar/{Path(store_path).name[:32]}x.nar.zst\nCompression: zstd\n"
            f"FileHash: sha256:0\nFileSize: {len(nar)}\nNarHash: sha256:0\nNarSize: 1\nReferences: {references}\n")
    return text + (f"Sig: {sig}\n" if sig else "")


def cache_files(*, run_sig: str | None = "ci-1:c2lnbmF0dXJl", drop: str = "") -> dict[str, bytes]:
    """A small binary cache: run, which refers to busybox."""
    files = {"nix-cache-info": b"StoreDir: /nix/store\nPriority: 10\n"}
    for path, refs, sig in ((BUSYBOX, "", "ci-1:c2lnbmF0dXJl"), (RUN, Path(BUSYBOX).name, run_sig)):
        nar = f"nar of {path}".encode()
        info = narinfo(path, nar, refs, sig)
        files[f"{Path(path).name[:32]}.narinfo"] = info.encode()
        files[bundles.parse_narinfo(info, "x").url] = nar
    return {name: data for name, data in files.items() if name != drop}


def write_bundle(path: Path, files: dict[str, bytes], result: str | None = RUN) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in sorted(files.items()):
            entry = tarfile.TarInfo(f"cache/{name}")
            entry.size = len(data)
            archive.addfile(entry, io.BytesIO(data))
        if result is not None:
            link = tarfile.TarInfo("result")
            link.type, link.linkname = tarfile.SYMTYPE, result
            archive.addfile(link)
    return path


# --- keys ----------------------------------------------------------------------------

def test_public_keys_are_read_checked_and_deduplicated(tmp_path):
    key_file = tmp_path / "key.pub"
    key_file.write_text(PUBLIC + "\n")
    assert bundles.public_keys([key_file], [PUBLIC, "other-1:" + PUBLIC.split(":")[1]]) == (
        PUBLIC, "other-1:" + PUBLIC.split(":")[1])


def test_a_secret_key_where_a_public_one_belongs_is_refused_without_showing_it(tmp_path):
    key_file = tmp_path / "key.pub"
    key_file.write_text(SECRET)
    with pytest.raises(ConfigError) as caught:
        bundles.public_keys([key_file])
    assert "secret key" in caught.value.line() and SECRET.split(":")[1][:20] not in caught.value.line()


def test_garbage_public_key_is_refused():
    with pytest.raises(ConfigError, match="not a Nix public key"):
        bundles.public_keys([], ["ssh-ed25519 AAAA"])


def test_missing_public_key_file_says_how_to_make_one(tmp_path):
    with pytest.raises(ConfigError) as caught:
        bundles.public_keys([tmp_path / "none.pub"])
    assert "invoke bundle-key" in caught.value.hint


def test_secret_key_is_read_and_never_shown(tmp_path):
    path = tmp_path / "key.sec"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    assert bundles.read_secret_key(path) == (SECRET + "\n").encode()
    path.write_text(PUBLIC)
    with pytest.raises(ConfigError, match="is a public key"):
        bundles.read_secret_key(path)
    path.write_text("ci-1:" + "A" * 10)
    with pytest.raises(ConfigError) as caught:
        bundles.read_secret_key(path)
    assert "AAAAAAAAAA" not in caught.value.line()
    with pytest.raises(ConfigError, match="no secret key at") as caught:
        bundles.read_secret_key(tmp_path / "none")
    assert "invoke bundle-key" in caught.value.hint


def test_default_key_name_is_a_valid_key_name():
    assert bundles.keys._KEY_NAME.match(bundles.default_key_name())
    assert bundles.default_key_name().endswith("-1")


# --- narinfo, caches and bundles -------------------------------------------------------

def test_narinfo_fields():
    info = bundles.parse_narinfo(narinfo(RUN, b"x", Path(BUSYBOX).name, "ci-1:abc"), "test")
    assert (info.store_path, info.url, info.file_size, info.references, info.signers, info.compression) == (
        RUN, "nar/ii4sbl8d87lb57spq470dqjcg72ckl48x.nar.zst", 1, (Path(BUSYBOX).name,), ("ci-1",), "zstd")
    assert info.hash_part == "ii4sbl8d87lb57spq470dqjcg72ckl48"


def test_narinfo_without_store_path_is_refused():
    with pytest.raises(IntegrityError, match="not a valid narinfo"):
        bundles.parse_narinfo("URL: nar/x\n", "test")


def test_a_whole_bundle_is_read(tmp_path):
    info = bundles.inspect_bundle(write_bundle(tmp_path / "closure.tar", cache_files()))
    assert info.store_path == RUN
    assert sorted(info.closure) == sorted([RUN, BUSYBOX])
    assert info.cache.signers == ("ci-1",)
    assert info.cache.nar_bytes == sum(len(f"nar of {p}") for p in (RUN, BUSYBOX))


@pytest.mark.parametrize(("files", "result", "phrase"), [
    (cache_files(drop="nix-cache-info"), RUN, "no nix-cache-info"),
    (cache_files(), None, "no result link"),
    (cache_files(), "/etc/passwd", "not a store path"),
    (cache_files(drop="9ahivz1d7bq7899fb9ka2db44z3qb8ls.narinfo"), RUN, "refers to /nix/store/9ahivz1d"),
    (cache_files(drop="nar/ii4sbl8d87lb57spq470dqjcg72ckl48x.nar.zst"), RUN, "is missing"),
    (cache_files(drop="ii4sbl8d87lb57spq470dqjcg72ckl48.narinfo"), RUN, "lacks " + RUN),
])
def test_incomplete_bundles_are_refused(tmp_path, files, result, phrase):
    with pytest.raises(IntegrityError, match=phrase):
        bundles.inspect_bundle(write_bundle(tmp_path / "closure.tar", files, result))


def test_a_nar_of_the_wrong_size_is_refused(tmp_path):
    files = cache_files()
    files["nar/ii4sbl8d87lb57spq470dqjcg72ckl48x.nar.zst"] += b"more"
    with pytest.raises(IntegrityError, match="its narinfo says"):
        bundles.inspect_bundle(write_bundle(tmp_path / "closure.tar", files))


def test_missing_truncated_and_random_tarballs_are_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no bundle at"):
        bundles.inspect_bundle(tmp_path / "none.tar")
    with pytest.raises(ConfigError, match="is a directory"):
        bundles.inspect_bundle(tmp_path)
    whole = write_bundle(tmp_path / "closure.tar", cache_files()).read_bytes()
    for name, data in (("random.tar", bytes(range(256)) * 40), ("empty.tar", b""), ("cut.tar", whole[:1300])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(IntegrityError) as caught:
            bundles.inspect_bundle(tmp_path / name)
        assert "\n" not in caught.value.line()
        assert "invoke bundle" in caught.value.hint


def test_unsigned_paths_are_listed(tmp_path):
    info = bundles.inspect_bundle(write_bundle(tmp_path / "closure.tar", cache_files(run_sig=None)))
    assert info.cache.unsigned == (RUN,)


def test_cache_directory(tmp_path):
    for name, data in cache_files().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    assert len(bundles.cache_directory(tmp_path).narinfos) == 2
    with pytest.raises(ConfigError, match="no binary cache directory"):
        bundles.cache_directory(tmp_path / "none")
    (tmp_path / "nix-cache-info").write_text("StoreDir: /gnu/store\n")
    with pytest.raises(IntegrityError, match="/gnu/store"):
        bundles.cache_directory(tmp_path)


def test_the_tarball_is_the_same_for_the_same_tree(tmp_path):
    tree = tmp_path / "tree"
    for name, data in cache_files().items():
        (tree / "cache" / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / "cache" / name).write_bytes(data)
    (tree / "cache" / "log").mkdir()
    bundles.making._write_bundle(tree, RUN, tmp_path / "one.tar")
    for path in tree.rglob("*"):
        path.touch()  # other times, same content
    bundles.making._write_bundle(tree, RUN, tmp_path / "two.tar")
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()
    with tarfile.open(tmp_path / "one.tar") as archive:
        members = archive.getmembers()
    assert [m.name for m in members][:2] == ["cache", "cache/9ahivz1d7bq7899fb9ka2db44z3qb8ls.narinfo"]
    assert members[-1].name == "result" and members[-1].linkname == RUN
    assert {(m.uid, m.gid, m.mtime) for m in members} == {(0, 0, 1)}
    assert bundles.inspect_bundle(tmp_path / "one.tar").store_path == RUN


# --- substituters, scripts -----------------------------------------------------------

def test_substituter_settings_for_the_docker_build(tmp_path):
    used = bundles.Substituter("r/x:1", tmp_path, (PUBLIC, "other-1:k"))
    assert used.nix_config() == (f"extra-substituters = file:///src/{bundles.SUBSTITUTER_CONTEXT}\n"
                                 f"extra-trusted-public-keys = {PUBLIC} other-1:k\n")
    assert used.context() == {bundles.SUBSTITUTER_CONTEXT: str(tmp_path)}


def test_substituter_without_a_key_is_refused():
    with pytest.raises(ConfigError, match="no public key"), bundles.substituter("127.0.0.1:5000/x:1", ()):
        pass


def test_no_substituter_without_a_reference():
    with bundles.substituter(None, ()) as used:
        assert used is None


@pytest.mark.parametrize("script", ["restore.sh", "make-bundle.sh"])
def test_runner_scripts_are_posix_shell(script):
    path = ROOT / "images" / "runner" / script
    assert path.stat().st_mode & 0o111, f"{script} must be executable"
    subprocess.run(["sh", "-n", str(path)], check=True)
