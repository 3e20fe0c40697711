# `nix-shell` at the root of the repository: the services shell of
# nix/services.nix, with `run` (nginx and the status page under s6, in the
# foreground; Ctrl-C stops them), busybox, execline and s6 on PATH.
#
#   nix-shell -I nixpkgs=nix/nixpkgs              # pinned nixpkgs
#   nix-shell -I nixpkgs=nix/nixpkgs --pure -A services-shell --run run  # as in the seed
#   NIX_BUILD_SHELL=bash nix-shell --pure --arg services ./tests/fixtures/services.nix --run run
#                                                 # offline: the tests' stand-in
#
# nix-shell takes its own shell from <nixpkgs> (bashInteractive), which this
# project never looks up otherwise: -I nixpkgs=nix/nixpkgs gives it the pinned
# one, NIX_BUILD_SHELL names one outright.
{
  # A file shaped like nix/services.nix (services-shell, services-run, ...).
  services ? ./nix/services.nix
  # Package set; null: the one `services` defaults to.
, pkgs ? null
}:

let
  declared = import services (if pkgs == null then { } else { inherit pkgs; });
in
# The shell itself, which also answers to -A services-shell (and -A
# services-run, -A dummy-run).
declared.services-shell // {
  inherit (declared) services-shell services-run dummy-run;
}
