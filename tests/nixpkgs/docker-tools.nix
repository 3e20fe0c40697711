# A test stand-in for nixpkgs' dockerTools: only streamLayeredImage.
#
# Like nixpkgs, the result is a script that writes a docker-archive (the
# `docker save` format) to stdout: `./result | docker load`. Unlike nixpkgs,
# the layer tarballs are made at build time and kept in the store, so the
# script only has to wrap them in the outer tar. Every tar is written by
# tar.awk, so that the same inputs give the same bytes.
{ system, busybox, runCommand, writeText }:

let
  inherit (builtins) baseNameOf concatStringsSep map substring toJSON;

  # Docker's name for the CPU of a Nix system.
  architecture = {
    x86_64-linux = "amd64";
    aarch64-linux = "arm64";
  }.${system} or (throw "dockerTools stand-in: no Docker architecture for ${system}");
in
{
  streamLayeredImage =
    {
      # Image name, the repository in "name:tag".
      name
      # Image tag; null takes the hash part of the image's store path, so the
      # tag changes whenever the image's content does.
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

      # The layer tarballs and the image config (see stream-layered-image.sh).
      image = runCommand "${name}-image" {
        exportReferencesGraph = [ "closure" roots ];
        inherit roots configFile contents created maxLayers extraCommands
          fakeRootCommands architecture;
        tarAwk = ./tar.awk;
        inherit (builtins) storeDir;
      } (builtins.readFile ./stream-layered-image.sh);

      imageTag = if tag != null then tag
        else builtins.unsafeDiscardStringContext (substring 0 32 (baseNameOf image.outPath));

      # The docker-archive as a directory: manifest.json and links to the rest.
      archive = runCommand "${name}-archive" {
        inherit image;
        repoTags = toJSON [ "${name}:${imageTag}" ];
      } ''
        mkdir $out
        config=$(cat $image/config-name)
        ln -s $image/$config $out/$config
        for layer in $(cat $image/layer-order); do ln -sfn $image/$layer $out/$layer; done
        layers=$(sed 's|.*|"&/layer.tar"|' $image/layer-order | paste -sd, -)
        printf '[{"Config":"%s","RepoTags":%s,"Layers":[%s]}]' \
          "$config" "$repoTags" "$layers" > $out/manifest.json
      '';

      # The result: a script writing the archive as one tar to stdout, with
      # the names in a fixed order, links followed and owners 0:0.
      stream = runCommand "stream-${name}" { inherit image archive; } ''
        names="manifest.json $(cat $image/config-name)"
        for layer in $(cat $image/layer-order); do
          names="$names $layer $layer/layer.tar"
        done
        cat > $out <<EOF
        #!${busybox}/bin/sh
        # Writes the docker-archive of ${name}:${imageTag} to stdout:
        #   $out | docker load
        set -eu -o pipefail
        PATH=${busybox}/bin
        cd $archive
        printf '%s\\n' $names | xargs stat -L -c '%f %s 0 0 %N' | awk -f ${./tar.awk}
        EOF
        chmod +x $out
      '';
    in
    if fromImage != null then throw "dockerTools stand-in: fromImage is not supported"
    else if maxLayers < 2 then throw "dockerTools stand-in: maxLayers must be at least 2"
    else stream // { imageName = name; inherit imageTag image archive; };
}
