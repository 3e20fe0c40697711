# A NixOS virtual machine image: a qcow2 disk for qemu/KVM and for clouds that
# take qcow2 custom images, built from ./vm-configuration.nix and the pinned
# nixpkgs with the image builder of nixpkgs (system.build.images.qemu).
#
# `invoke build-vm` builds it in the builder container. By hand, from the
# repository root, on a machine with Nix (and /dev/kvm, or a lot of patience):
#
#   nix-build nix/vm.nix -A image --argstr settingsFile ~/vm.json
#   nix-build nix/vm.nix -A image --arg authorizedKeys '[ "ssh-ed25519 AAAA... me@laptop" ]'
#
# where ~/vm.json holds the user's settings, for example
#   { "authorizedKeys": [ "ssh-ed25519 AAAA... me@laptop" ], "hostName": "vm1", "diskSize": 8192 }
# and result/ then holds nixos-image-<release>-x86_64-linux.qcow2.
#
# Keys, names and sizes come from the user, never from this repository: there
# is no default key, and evaluation stops with a message when none is given.
{
  # The package set (pinned nixpkgs). Its source, pkgs.path, provides NixOS.
  pkgs ? import ./nixpkgs { }
  # A JSON file with any of the settings below (same names). Explicit
  # arguments win over it; unknown names in it are an error.
, settingsFile ? null
  # SSH public keys allowed to log in as `user` (at least one).
, authorizedKeys ? null
  # The login user (default "nixos"): in wheel, sudo without password.
, user ? null
  # The host name (default "nixos") until cloud-init's meta-data sets one.
, hostName ? null
  # The disk size in MiB (default 8192), or "auto" for just big enough.
, diskSize ? null
}:
let
  inherit (pkgs) lib;

  fromFile =
    if settingsFile == null then { }
    else builtins.fromJSON (builtins.readFile settingsFile);

  defaults = {
    authorizedKeys = [ ];
    user = "nixos";
    hostName = "nixos";
    diskSize = 8192;
  };
  explicit = lib.filterAttrs (_: value: value != null) { inherit authorizedKeys user hostName diskSize; };
  settings = defaults // fromFile // explicit;

  unknown = builtins.attrNames (removeAttrs fromFile (builtins.attrNames defaults));

  # Refuse what would give a machine nobody can use, before anything builds.
  checked =
    lib.throwIf (unknown != [ ])
      "nix/vm.nix: unknown settings in ${toString settingsFile}: ${lib.concatStringsSep ", " unknown} (known: ${lib.concatStringsSep ", " (builtins.attrNames defaults)})"
    (lib.throwIf (!builtins.isList settings.authorizedKeys || settings.authorizedKeys == [ ])
      "nix/vm.nix: no SSH public key given, so nobody could log into the VM; pass --arg authorizedKeys '[ \"ssh-ed25519 ...\" ]' or a settingsFile with authorizedKeys"
    (lib.throwIf (settings.diskSize != "auto" && !(builtins.isInt settings.diskSize && settings.diskSize >= 1024))
      "nix/vm.nix: diskSize must be \"auto\" or a number of MiB of at least 1024, not ${builtins.toJSON settings.diskSize}"
      settings));

  nixos = import (pkgs.path + "/nixos/lib/eval-config.nix") {
    # The platform comes from pkgs, through nixpkgs.pkgs below.
    system = null;
    modules = [
      # Use the pinned package set as it is: no second nixpkgs evaluation,
      # and nixpkgs.config or overlays set by a module would be an error.
      (pkgs.path + "/nixos/modules/misc/nixpkgs/read-only.nix")
      { nixpkgs.pkgs = pkgs; }
      (import ./vm-configuration.nix checked)
    ];
  };
in
{
  # The qcow2 image: a directory holding one .qcow2 file.
  image = nixos.config.system.build.images.qemu;

  # The system alone (its closure is what the image holds).
  system = nixos.config.system.build.toplevel;

  # The settings after merging and checking; evaluating them needs only
  # pkgs.lib, not NixOS (the tests do so where nixpkgs is unavailable).
  settings = checked;

  # The evaluated configuration, to inspect options:
  #   nix-instantiate --eval nix/vm.nix -A config.services.openssh.enable --argstr settingsFile ~/vm.json
  inherit (nixos) config;
}
