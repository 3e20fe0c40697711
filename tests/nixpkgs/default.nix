# A stand-in for nixpkgs, for tests only.
#
# Tests cannot fetch nixpkgs, so this offers the few attributes the fixtures
# and the toolkit use, with nixpkgs' names and meaning, built from nothing but
# a static busybox copied into the Nix store. By hand:
#   nix-build tests/nixpkgs -A busybox
{
  # The platform to build for, as in nixpkgs.
  system ? builtins.currentSystem
  # A statically linked busybox on the building machine (Debian: busybox-static).
  # Give its real location: a directory reached through a symlink (/bin on a
  # merged-/usr system) would be copied as the symlink itself.
, busyboxBinary ? /usr/bin/busybox
  # Other nixpkgs arguments (config, overlays, ...) are accepted and ignored.
, ...
}:

let
  inherit (builtins) baseNameOf concatStringsSep dirOf map readDir;

  throwIf = cond: message: value: if cond then throw message else value;

  busyboxDir = dirOf busyboxBinary;
  isSymlink = p: ((readDir (dirOf p)).${baseNameOf p} or null) == "symlink";

  # The directory holding busybox, imported with busybox as its only file.
  # Importing the bare file would name it "<hash>-busybox", and busybox picks
  # the applet to run from that name ("applet not found").
  busyboxSource = throwIf (isSymlink busyboxDir)
    "busyboxBinary: ${toString busyboxDir} is a symlink; pass the real path (e.g. /usr/bin/busybox, not /bin/busybox)"
    (builtins.path {
      path = busyboxDir;
      name = "busybox-static-source";
      filter = path: type: path == toString busyboxBinary;
    });

  # bin/busybox and a symlink per applet (sh, httpd, tar, ...).
  busybox = derivation {
    name = "busybox-static";
    inherit system;
    builder = "${busyboxSource}/${baseNameOf busyboxBinary}";
    args = [ "sh" "-c" ''
      set -eu
      bb=${busyboxSource}/${baseNameOf busyboxBinary}
      $bb mkdir -p $out/bin
      $bb cp $bb $out/bin/busybox
      for applet in $($bb --list); do
        [ "$applet" = busybox ] || $bb ln -s busybox "$out/bin/$applet"
      done
    '' ];
  };

  # runCommand name env script: runs script with busybox sh (set -eu, pipefail)
  # to write $out. The attributes of env become environment variables; the
  # bin/ of each of env.nativeBuildInputs and env.buildInputs goes on PATH.
  runCommand = name: env: script: derivation (env // {
    inherit name system;
    builder = "${busybox}/bin/busybox";
    args = [ "sh" "-c" ("set -eu -o pipefail\n" + script) ];
    PATH = concatStringsSep ":" (map (p: "${p}/bin")
      ([ busybox ] ++ env.nativeBuildInputs or [ ] ++ env.buildInputs or [ ]));
  });

  # writeTextFile { name, text, executable, destination }: text in a file,
  # $out itself or $out/destination.
  writeTextFile = { name, text, executable ? false, destination ? "" }:
    runCommand name {
      inherit text executable destination;
      passAsFile = [ "text" ];
    } ''
      target=$out$destination
      mkdir -p "$(dirname "$target")"
      cp "$textPath" "$target"
      if [ -n "$executable" ]; then chmod +x "$target"; fi
    '';

  # writeText name text: text in the file $out.
  writeText = name: text: writeTextFile { inherit name text; };

  # A tool of the building machine put in the store under bin/.
  # Impure on purpose: nixpkgs would build skopeo and umoci; the stand-in links
  # to the Debian packages of the builder container instead, so it only works
  # where /usr/bin/<tool> exists.
  hostTool = tool: runCommand "${tool}-from-host" { } ''
    mkdir -p $out/bin
    ln -s /usr/bin/${tool} $out/bin/${tool}
  '';

  hostSkaware = import ./host-skaware.nix { inherit system runCommand; };

in
{
  inherit busybox runCommand writeTextFile writeText;

  # nixpkgs' path: the toolkit evaluates it to find the nixpkgs to copy.
  path = ./.;

  # writeTextDir path text: text in the file $out/path.
  writeTextDir = path: text: writeTextFile {
    inherit text;
    name = baseNameOf path;
    destination = "/${path}";
  };

  # mkShell { name, packages, shellHook }: an environment for nix-shell.
  # nix-shell sources $stdenv/setup, which here only puts the bin/ of each
  # package on PATH and defines runHook for shellHook. The shell is the bash
  # nix-shell finds: NIX_BUILD_SHELL, else bash on the PATH it was started
  # with (it says it cannot build <nixpkgs>'s bashInteractive first). Building
  # the environment only writes a note.
  mkShell = { name ? "nix-shell", packages ? [ ], buildInputs ? [ ], nativeBuildInputs ? [ ], shellHook ? "" }:
    let
      setup = writeTextFile {
        name = "stand-in-stdenv";
        destination = "/setup";
        text = ''
          PATH=
          for package in $nativeBuildInputs $buildInputs; do PATH=$PATH''${PATH:+:}$package/bin; done
          export PATH
          runHook() { eval "''${!1:-}"; }
        '';
      };
    in
    derivation {
      inherit name system shellHook buildInputs;
      nativeBuildInputs = packages ++ nativeBuildInputs;
      stdenv = setup;
      builder = "${busybox}/bin/busybox";
      args = [ "sh" "-c" "echo '${name}: an environment for nix-shell' > $out" ];
    };

  # writeScript name text: text in the executable file $out.
  writeScript = name: text: writeTextFile { inherit name text; executable = true; };

  skopeo = hostTool "skopeo";
  umoci = hostTool "umoci";

  # s6 and execline: the machine's Debian packages copied into the store
  # (impure on purpose, see host-skaware.nix). s6.debianPaths links the
  # paths Debian compiled into them (/usr/bin/s6-supervise, ...): images
  # that run this s6 need it in their contents.
  inherit (hostSkaware) execline;
  s6 = hostSkaware.s6 // { inherit (hostSkaware) debianPaths; };

  dockerTools = import ./docker-tools.nix { inherit system busybox runCommand writeText; };
}
