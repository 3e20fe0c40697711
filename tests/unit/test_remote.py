"""Remote builder settings (ci.remote) without a builder: Nix's builders syntax, the SSH key, pinned host
keys, what the container gets, and what a builder's answer means."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import subprocess
import tarfile

import pytest

from ci import remote
from ci.core.errors import BuildFailed, ConfigError

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKy8zJ8v9Gd5wH1u1QYcVxH1hQm7w2q3o0r1b2c3d4e5"


@pytest.fixture(scope="module")
def private_key(tmp_path_factory):
    path = tmp_path_factory.mktemp("key") / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return path


def test_nix_syntax_with_a_port_and_features():
    [builder] = remote.parse_builders("ssh-ng://nix@builder.example:2222 x86_64-linux,i686-linux - 4 2 kvm,big-parallel")
    assert builder.uri == "ssh-ng://nix@builder.example"  # Nix 2.26 takes no port: the SSH config carries it
    assert builder.name == "ssh-ng://nix@builder.example:2222"
    assert builder.known_host == "[builder.example]:2222"
    assert (builder.systems, builder.max_jobs, builder.speed_factor) == (("x86_64-linux", "i686-linux"), 4, 2)
    assert builder.supported == ("kvm", "big-parallel")
    assert builder.machine() == ("ssh-ng://nix@builder.example x86_64-linux,i686-linux /.nix-ci-remote/id 4 2 "
                                 "kvm,big-parallel - -")


def test_several_entries_comments_and_defaults():
    builders = remote.parse_builders("ssh-ng://a x86_64-linux ; # none here\nssh://b@c aarch64-linux - 8")
    assert [b.name for b in builders] == ["ssh-ng://a", "ssh://b@c"]
    assert builders[0].max_jobs == 1 and builders[1].max_jobs == 8
    assert builders[0].known_host == "a"


def test_the_eighth_field_pins_the_host_key():
    encoded = base64.b64encode(f"{HOST_KEY} root@b".encode()).decode()
    [builder] = remote.parse_builders(f"ssh-ng://b x86_64-linux - 1 1 - - {encoded}")
    assert builder.host_key == HOST_KEY


@pytest.mark.parametrize(("spec", "phrase"), [
    ("builder.example x86_64-linux", "is not an ssh-ng:// or ssh:// builder"),
    ("https://b x86_64-linux", "is not an ssh-ng:// or ssh:// builder"),
    ("ssh-ng://b", "names no system"),
    ("ssh-ng://b x86_64-linux 4 1 kvm", "names an SSH key (4) in its third field"),  # the key is the toolkit's
    ("ssh-ng://b x86_64-linux /root/.ssh/id", "names an SSH key"),
    ("ssh-ng://b?ssh-key=/k x86_64-linux", "names an SSH key in its URI"),
    ("ssh-ng://b x86_64 - 1", "is not a Nix system"),
    ("ssh-ng://b x86_64-linux - four", "not a number"),
    ("ssh-ng://b x86_64-linux - 1 1 - - not-base64!", "is not a base64 public host key"),
    ("ssh-ng://b:99999 x86_64-linux", "no valid port"),
    ("ssh-ng://b:22 x86_64-linux; ssh-ng://b:23 x86_64-linux", "two ports"),
    (" ; ", "names no builder"),
])
def test_bad_builders_are_one_line(spec, phrase):
    with pytest.raises(ConfigError) as raised:
        remote.parse_builders(spec)
    assert phrase in raised.value.line()


def test_settings_need_a_pinned_host_key(private_key):
    with pytest.raises(ConfigError, match="no host key is pinned for the builder ssh-ng://b:2222"):
        remote.settings(builders="ssh-ng://b:2222 x86_64-linux", key_file=private_key,
                        host_keys=f"b {HOST_KEY}")  # port 22's key does not pin port 2222's
    pinned = remote.settings(builders="ssh-ng://b:2222 x86_64-linux", key_file=private_key,
                             host_keys=[f"[b]:2222 {HOST_KEY}"])
    assert pinned is not None and pinned.known_hosts == (f"[b]:2222 {HOST_KEY}",)


def test_hashed_and_pattern_known_hosts_lines_pin(private_key, tmp_path):
    salt = b"0123456789abcdefghij"
    digest = hmac.new(salt, b"[b]:2222", hashlib.sha1).digest()
    hashed = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()} {HOST_KEY}"
    (tmp_path / "known_hosts").write_text(f"# pinned\n{hashed}\n*.example {HOST_KEY}\n")
    settings = remote.settings(builders="ssh-ng://b:2222 x86_64-linux; ssh-ng://c.example x86_64-linux",
                               key_file=private_key, known_hosts_file=tmp_path / "known_hosts")
    assert settings is not None and len(settings.known_hosts) == 2
    with pytest.raises(ConfigError, match="no host key is pinned"):
        remote.settings(builders="ssh-ng://d x86_64-linux", key_file=private_key,
                        host_keys=f"@revoked d {HOST_KEY}")


def test_no_builders_no_settings():
    assert remote.settings(builders=None) is None
    assert remote.settings(builders="  ") is None


@pytest.mark.parametrize(("content", "phrase"), [
    (HOST_KEY, "does not hold an SSH private key"),
    ("", "does not hold an SSH private key"),
])
def test_a_key_that_is_no_private_key_is_refused_unshown(tmp_path, content, phrase):
    path = tmp_path / "id"
    path.write_text(content)
    with pytest.raises(ConfigError) as raised:
        remote.read_key(path)
    assert phrase in raised.value.line()
    assert content[20:40] not in raised.value.line() or not content


def test_a_passphrase_protected_key_is_refused(tmp_path):
    path = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret words", "-f", str(path)], check=True)
    with pytest.raises(ConfigError, match="protected by a passphrase"):
        remote.read_key(path)


@pytest.mark.parametrize(("make", "phrase"), [
    (lambda p: None, "it does not exist"),
    (lambda p: p.mkdir(), "it is a directory"),
])
def test_a_missing_or_unreadable_key_file(tmp_path, make, phrase):
    path = tmp_path / "id"
    make(path)
    with pytest.raises(ConfigError, match=phrase):
        remote.read_key(path)


def test_the_key_from_the_environment(private_key, monkeypatch):
    monkeypatch.setenv("NIX_CI_BUILDERS_SSH_KEY", private_key.read_text())
    assert remote.read_key(None) == private_key.read_bytes()
    monkeypatch.delenv("NIX_CI_BUILDERS_SSH_KEY")
    with pytest.raises(ConfigError) as raised:
        remote.read_key(None)
    assert "NIX_CI_BUILDERS_SSH_KEY" in raised.value.line()


def test_what_the_container_gets(private_key):
    settings = remote.settings(builders="ssh-ng://nix@b:2222 x86_64-linux - 2", key_file=private_key,
                               host_keys=f"[b]:2222 {HOST_KEY}", local_builds=False)
    assert settings is not None
    assert settings.nix_conf() == ("builders = ssh-ng://nix@b x86_64-linux /.nix-ci-remote/id 2 1 - - -\n"
                                   "builders-use-substitutes = true\nmax-jobs = 0\n")
    config = settings.ssh_config()
    assert "Host b\n  Port 2222\n" in config
    assert "StrictHostKeyChecking yes" in config and "StrictHostKeyChecking no" not in config
    assert "UserKnownHostsFile /.nix-ci-remote/known_hosts" in config and "BatchMode yes" in config
    with tarfile.open(fileobj=io.BytesIO(settings.files()), mode="r:") as archive:
        members = {m.name: m for m in archive.getmembers()}
        assert members[".nix-ci-remote"].isdir() and members[".nix-ci-remote"].mode == 0o700
        for name in ("id", "known_hosts", "ssh_config", "nix.conf"):
            member = members[f".nix-ci-remote/{name}"]
            assert (member.mode, member.uid, member.gid) == (0o600, 0, 0)
        assert archive.extractfile(".nix-ci-remote/id").read() == private_key.read_bytes()
    assert settings.environment() == {"NIX_USER_CONF_FILES": "/.nix-ci-remote/nix.conf",
                                      "NIX_SSHOPTS": "-F /.nix-ci-remote/ssh_config"}
    assert private_key.read_text()[40:80] not in repr(settings)


def test_a_builder_of_another_system_cannot_serve(private_key):
    settings = remote.settings(builders="ssh-ng://b aarch64-linux", key_file=private_key, host_keys=f"b {HOST_KEY}")
    assert settings is not None
    with pytest.raises(ConfigError, match="no remote builder builds x86_64-linux"):
        settings.for_system("x86_64-linux")
    assert remote.system_of("amd64") == "x86_64-linux"


def probed(stdout: str, private_key) -> list[remote.Answer]:
    settings = remote.settings(builders="ssh-ng://b x86_64-linux", key_file=private_key, host_keys=f"b {HOST_KEY}")
    assert settings is not None
    return remote.answers(settings, stdout)


@pytest.mark.parametrize(("said", "kind", "phrase"), [
    ("Host key for [b]:2222 has changed and you have requested strict checking.\nHost key verification failed.",
     BuildFailed, "has changed: it is not the pinned one"),
    ("No ED25519 host key is known for b and you have requested strict checking.", BuildFailed, "not pinned"),
    ("root@b: Permission denied (publickey).", BuildFailed, "refused the SSH key"),
    ("ssh: connect to host b port 22: Connection refused", remote.Unanswered,
     "does not answer (connect to host b port 22: Connection refused)"),
    ("sh: 1: ssh: not found", BuildFailed, "has no ssh client"),
])
def test_what_an_answer_means(private_key, said, kind, phrase):
    stdout = "1 failed\n" + "".join(f"1 | {line}\n" for line in said.splitlines())
    [answer] = probed(stdout, private_key)
    problem = answer.problem()
    assert type(problem) is kind and phrase in problem.line()


def test_an_answer(private_key):
    [answer] = probed("1 ok\n", private_key)
    assert answer.ok and answer.problem() is None
