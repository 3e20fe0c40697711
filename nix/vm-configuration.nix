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
    # virtio drivers (disk, network, console, entropy...) in the initrd. It
    # does not start the qemu guest agent (services.qemuGuest).
    (modulesPath + "/profiles/qemu-guest.nix")
  ];

  # Not profiles/headless.nix: in nixos-25.11 it masks serial-getty@ttyS0
  # (and getty@tty1, autovt@, serial-getty@hvc0), which takes away the serial
  # login prompt promised below, and adds panic=1 boot.panic_on_fail
  # vga=0x317 nomodeset to the kernel command line. What we keep of it is
  # set here, each with its reason (panic=1: see boot.kernelParams). Left
  # out: boot.panic_on_fail (a failed stage 1 offers its shell on the serial
  # console, where `invoke run-vm` shows it, instead of rebooting in a loop),
  # vga=0x317 and nomodeset (a cloud's VGA console, where there is one, keeps
  # the kernel's default mode), and the masked gettys (tty1 keeps its login
  # prompt too).

  # Emergency mode is sulogin, and root has no password (NixOS locks it), so
  # it could never open a shell: keep booting instead, so that SSH may come up.
  systemd.enableEmergencyMode = false;
  # GRUB shows no menu (boot.loader.timeout = 0): no splash picture for it.
  boot.loader.grub.splashImage = null;

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

  # Kernel and systemd messages, and a login prompt, on the serial port: for
  # the console= device, systemd's getty generator starts serial-getty@ttyS0
  # (nothing masks it, as headless.nix would). panic=1: a kernel panic
  # reboots after 1 s rather than leaving a dead machine. No boot menu to
  # wait for.
  boot.kernelParams = [ "console=ttyS0,115200" "panic=1" ];
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
