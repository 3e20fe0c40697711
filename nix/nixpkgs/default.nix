# The pinned nixpkgs package set.
#
# The commit and the hash of its source tarball live in ./pin.json and only
# there: this file derives the download URL from them. Nothing here looks at
# <nixpkgs>, NIX_PATH or channels, so every machine evaluates the same
# package set.
#
#   nix-instantiate --eval -E '(import ./nix/nixpkgs {}).lib.version'
{ system ? builtins.currentSystem   # platform to build for; the machine running Nix unless told otherwise
}:
let
  pin = builtins.fromJSON (builtins.readFile ./pin.json);

  # GitHub's archive of exactly that commit. fetchTarball unpacks it and checks
  # the NAR hash of the unpacked tree against pin.sha256, so a changed or
  # tampered archive fails the evaluation instead of being used.
  nixpkgs = builtins.fetchTarball {
    url = "https://github.com/NixOS/nixpkgs/archive/${pin.rev}.tar.gz";
    sha256 = pin.sha256;
  };

  # Checked before the download: an older Nix cannot even parse this nixpkgs.
  # The toolkit recognises this message and adds how to get a newer Nix.
  tooOld = builtins.compareVersions builtins.nixVersion pin.minimumNixVersion < 0;
in
if tooOld then
  throw "nixpkgs ${pin.branch} needs Nix ${pin.minimumNixVersion} or newer, and this is Nix ${builtins.nixVersion}"
else
import nixpkgs {
  # Same platform as asked for above (x86_64-linux, aarch64-linux, ...).
  inherit system;
  # An empty config: ~/.config/nixpkgs/config.nix and NIXPKGS_CONFIG are ignored,
  # so nobody's local settings (allowUnfree, package overrides) leak into images.
  config = { };
  # No overlays: ~/.config/nixpkgs/overlays and NIXPKGS_OVERLAYS are ignored too.
  overlays = [ ];
}
