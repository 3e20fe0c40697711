# The NixOS system inside the VM image that nix/vm.nix builds.
#
# A headless qemu guest that is reached over SSH with keys only, whose root
# partition grows to fill whatever disk it boots from, whose console is the
# first serial port (what `qemu -nographic` shows), and where cloud-init reads
# its instance data from a NoCloud seed disk (`invoke cidata`) or a
# ConfigDrive (OpenStack, DigitalOcean).
#
# This file is a function of the user's settings, which live outside the
# repository (see nix/vm.nix), and returns a NixOS module.
{
  # SSH public keys (lines of an authorized_keys file) that may log in as
  # `user`. nix/vm.nix refuses an empty list: nobody could log in.
  authorizedKeys
  # The login user: a normal user in wheel, with sudo and no password at all.
, user
  # The machine's name; cloud-init replaces it with meta-data's local-hostname.
, hostName
  # Size of the disk image in MiB, or "auto" for just big enough. Either way
  # the root partition grows at boot to fill a larger virtual disk.
, diskSize
}:
{ lib, modulesPath, ... }:
{
  imports = [
    # virtio disk, network and entropy drivers in the initrd, and the qemu agent.
    (modulesPath + "/profiles/qemu-guest.nix")
    # No graphical console, no sound; stay on the serial console.
    (modulesPath + "/profiles/headless.nix")
  ];

  # What only the disk image needs, applied to the image's variant of this
  # system (system.build.images.qemu: legacy BIOS boot, GRUB on /dev/vda, an
  # ext4 root labelled "nixos" that resizes itself).
  image.modules.qemu = {
    virtualisation.diskSize = diskSize;
  };

  # The same boot and root filesystem as the image variant sets, so that the
  # plain system (nix/vm.nix's `system`) evaluates too and can be switched to
  # from inside the VM.
  boot.loader.grub.device = lib.mkDefault "/dev/vda";
  fileSystems."/" = lib.mkDefault {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
    autoResize = true;
  };
  boot.growPartition = true;

  # Kernel and systemd messages, and a login prompt, on the serial port.
  # No boot menu to wait for.
  boot.kernelParams = [ "console=ttyS0,115200" ];
  boot.loader.timeout = 0;

  networking.hostName = hostName;

  services.openssh = {
    enable = true;
    settings = {
      # Keys only: no passwords, no keyboard-interactive, no root.
      PasswordAuthentication = false;
      KbdInteractiveAuthentication = false;
      PermitRootLogin = "no";
    };
  };

  users.mutableUsers = false;
  users.users.${user} = {
    isNormalUser = true;
    extraGroups = [ "wheel" ];
    openssh.authorizedKeys.keys = authorizedKeys;
  };
  # The user has no password, so sudo cannot ask for one.
  security.sudo.wheelNeedsPassword = false;

  services.cloud-init = {
    enable = true;
    # NoCloud: a disk labelled cidata, as `invoke cidata` makes for qemu.
    # ConfigDrive: what OpenStack and DigitalOcean attach. Listing only these
    # two keeps cloud-init from probing metadata servers that are not there.
    settings.datasource_list = [ "NoCloud" "ConfigDrive" ];
  };

  # The release whose defaults this configuration was written against.
  system.stateVersion = "25.11";
}
