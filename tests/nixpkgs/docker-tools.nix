# A test stand-in for nixpkgs' dockerTools: only streamLayeredImage.
#
# Like nixpkgs, the result is a script that writes a docker-archive (the
# `docker save` format) to stdout: `./result | docker load`. Unlike nixpkgs,
# the layer tarballs are made at build time, one derivation per layer whose
# only inputs are the layer's store paths (and busybox, tar.awk), so a path
# that did not change keeps its layer from the store, as nix2container caches
# per store path. The script then only `cat`s prebuilt pieces. Every tar is
# written by tar.awk, so that the same inputs give the same bytes.
#
# The layers are known only once the closure is, so it is read at evaluation
# time from a derivation (import-from-derivation): evaluating the layers
# builds the contents and what config refers to. nix-build allows it by
# default; Nix 2.8's `nix-instantiate --eval` needs --read-write-mode for it
# on a store that lacks the plan. imageTag needs no build.
{
  # The platform to build for, as in nixpkgs.
  system
  # The static busybox package: the shell of the builders and of the script.
, busybox
  # The stand-in's runCommand (default.nix).
, runCommand
  # The stand-in's writeText (default.nix).
, writeText
}:

let
  inherit (builtins) baseNameOf concatStringsSep fromJSON head length map readFile
    storePath substring toJSON unsafeDiscardStringContext;

  # Docker's name for the CPU of a Nix system.
  architecture = {
    x86_64-linux = "amd64";
    aarch64-linux = "arm64";
  }.${system} or (throw "dockerTools stand-in: no Docker architecture for ${system}");

  # The name of a store path without its hash ("busybox-static").
  pathName = path: substring 33 200 (baseNameOf path);

  # The layer of these store paths (a list, usually of one). No image name nor
  # other setting goes in: the same paths give the same derivation, in every
  # image, so Nix builds it once.
  storeLayer = paths: runCommand
    ("layer-" + substring 0 150 (pathName (head paths))
      + (if length paths > 1 then "-and-${toString (length paths - 1)}-more" else ""))
    {
      # storePath gives each path its context back (fromJSON refuses
      # strings with context), so that it is an input of the layer.
      storePaths = map storePath paths;
      tarAwk = ./tar.awk;
      inherit (builtins) storeDir;
    }
    (readFile ./layer.sh);
in
{
  streamLayeredImage =
    {
      # Image name, the repository in "name:tag".
      name
      # Image tag; null takes the hash part of the layer plan's store path,
      # whose inputs are everything that shapes the image, so the tag
      # changes whenever the image's content may.
    , tag ? null
      # Store paths whose closures become layers; their files are also linked
      # into / in the customisation layer (directories become real ones).
    , contents ? [ ]
      # The image's config (Cmd, User, Env, ExposedPorts, WorkingDir, ...);
      # store paths it mentions and their closures become layers too.
    , config ? { }
      # Creation date of the image. The default keeps it reproducible;
      # "now" is not supported.
    , created ? "1970-01-01T00:00:01Z"
      # Most layers in the image, the customisation layer included; store
      # paths that do not get a layer of their own share the last store layer.
    , maxLayers ? 100
      # Shell commands run in the customisation layer's root directory.
    , extraCommands ? ""
      # Shell commands run after extraCommands, in the same directory. nixpkgs
      # runs them under fakeroot; there is none here, so they run as they are:
      # chown works only when Nix builds as root (build-users-group =).
      # Files of the building user are 0:0 in the layer either way.
    , fakeRootCommands ? ""
      # Layering on a base image is not supported by the stand-in.
    , fromImage ? null
      # Other nixpkgs arguments (uid, gid, enableFakechroot, ...) are ignored.
    , ...
    }:
    let
      configFile = writeText "${name}-config.json" (toJSON config);

      # Names every root, so that one exportReferencesGraph gives the closure.
      roots = writeText "${name}-roots"
        (concatStringsSep "\n" (map toString contents ++ [ configFile ]));

      # The store layers as JSON: lists of store paths, most referenced first
      # (see layer-plan.sh). Its output path names the image (imageTag).
      plan = runCommand "${name}-layer-plan.json" {
        exportReferencesGraph = [ "closure" roots ];
        inherit roots configFile maxLayers;
        # Unused by the builder; here so that the plan's output path, hence
        # the default tag, also changes with the customisation and config.
        inherit created extraCommands fakeRootCommands architecture;
      } (readFile ./layer-plan.sh);

      # As nixpkgs' conf.json, which its script refers to: the store layers
      # (store_layers, lists of store paths), so that the image's store paths
      # can be read from the script's references, as there.
      conf = runCommand "${name}-conf.json" { inherit plan; } ''
        { printf '{"store_layers":'; cat "$plan"; printf '}\n'; } > $out
      '';

      # The customisation layer: contents linked into /, then the commands.
      customisationLayer = runCommand "${name}-customisation-layer" {
        storePaths = "";
        inherit contents extraCommands fakeRootCommands;
        tarAwk = ./tar.awk;
        inherit (builtins) storeDir;
      } (readFile ./layer.sh);

      # Every layer, in image order. Reading the plan builds it (and the
      # closure) during evaluation.
      layers = map storeLayer (fromJSON (unsafeDiscardStringContext (readFile plan)))
        ++ [ customisationLayer ];

      imageTag = if tag != null then tag
        else unsafeDiscardStringContext (substring 0 32 (baseNameOf plan.outPath));

      # The config, the manifest, and the docker-archive's first and last
      # bytes (see image.sh).
      image = runCommand "${name}-image" {
        inherit layers configFile created architecture;
        repoTags = toJSON [ "${name}:${imageTag}" ];
        tarAwk = ./tar.awk;
      } (readFile ./image.sh);

      # The result: a script writing the docker-archive to stdout, made of
      # prebuilt pieces, so it costs what reading them does.
      script = concatStringsSep "\n" ([
        "#!${busybox}/bin/sh"
        "# Writes the docker-archive of ${name}:${imageTag} to stdout: ./result | docker load"
        "# Its store layers: ${conf}"
        "exec ${busybox}/bin/cat ${image}/archive-head \\"
      ] ++ map (layer: "  ${layer}/archive-entry ${layer}/layer.tar \\") layers
        ++ [ "  ${image}/archive-end" "" ]);
      stream = runCommand "stream-${name}" {
        inherit script;
        passAsFile = [ "script" ];
      } ''
        cp "$scriptPath" $out
        chmod +x $out
      '';
    in
    if fromImage != null then throw "dockerTools stand-in: fromImage is not supported"
    else if maxLayers < 2 then throw "dockerTools stand-in: maxLayers must be at least 2"
    else stream // {
      imageName = name;
      inherit imageTag plan layers image;
    };
}
