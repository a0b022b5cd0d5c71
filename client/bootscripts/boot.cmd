# Overdrive A/B slot selection for U-Boot.
#
# Build it with:  mkimage -A arm64 -T script -C none -n overdrive -d boot.cmd boot.scr
# The first part chooses the slot and saves what it changed; the part after the "board" line
# loads and boots the chosen slot and must be adapted to your board (see docs/boot-control.md).
# The rules are client/bootchooser.py's choose_boot:
#
#   1. if the first slot in BOOT_ORDER is on trial (BOOT_x_GOOD != 1) and has tries left
#      (BOOT_x_LEFT > 0, hex), boot it and spend one try;
#   2. otherwise boot the first good slot in BOOT_ORDER, spending nothing: a committed slot is
#      never counted, so switching the ignition off mid-boot cannot roll it back;
#   3. otherwise nothing is bootable: run the rescue command.
#
# Variables (Overdrive's U-Boot backend writes them with fw_setenv): BOOT_ORDER ("A B"),
# BOOT_A_LEFT / BOOT_B_LEFT (hex, as setexpr writes), BOOT_A_GOOD / BOOT_B_GOOD (0 or 1),
# BOOTED_SLOT (the slot this script started last). saveenv runs only when a try is spent or the
# booted slot changes, so a steady committed slot costs no environment write.

test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 0
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 0
test -n "${BOOT_A_GOOD}" || setenv BOOT_A_GOOD 1
test -n "${BOOT_B_GOOD}" || setenv BOOT_B_GOOD 0

setenv overdrive_slot
setenv overdrive_first
setenv overdrive_save 0
for overdrive_name in "${BOOT_ORDER}"; do
  if test -z "${overdrive_first}"; then
    setenv overdrive_first "${overdrive_name}"
  fi
done

# 1. a trial: the first slot in BOOT_ORDER, not good, with tries left
if test "${overdrive_first}" = "A" && test "${BOOT_A_GOOD}" != "1" && test 0x${BOOT_A_LEFT} -gt 0; then
  setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
  setenv overdrive_slot A
  setenv overdrive_save 1
fi
if test "${overdrive_first}" = "B" && test "${BOOT_B_GOOD}" != "1" && test 0x${BOOT_B_LEFT} -gt 0; then
  setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
  setenv overdrive_slot B
  setenv overdrive_save 1
fi

# 2. otherwise the first good slot in BOOT_ORDER, spending nothing
for overdrive_name in "${BOOT_ORDER}"; do
  if test -z "${overdrive_slot}" && test "${overdrive_name}" = "A" && test "${BOOT_A_GOOD}" = "1"; then
    setenv overdrive_slot A
  fi
  if test -z "${overdrive_slot}" && test "${overdrive_name}" = "B" && test "${BOOT_B_GOOD}" = "1"; then
    setenv overdrive_slot B
  fi
done

# Save the spent try and the record of the booted slot, only when something changed.
if test "${overdrive_slot}" != "${BOOTED_SLOT}"; then
  setenv BOOTED_SLOT "${overdrive_slot}"
  setenv overdrive_save 1
fi
setenv overdrive_name
setenv overdrive_first
if test "${overdrive_save}" = "1"; then
  setenv overdrive_save
  saveenv
fi
setenv overdrive_save

# ==== board: adapt below this line (partitions, kernel, device tree, rescue) ====
if test "${overdrive_slot}" = "A"; then
  setenv bootargs "${default_bootargs} root=/dev/mmcblk0p2 ro overdrive.slot=A"
  setenv overdrive_part 0:2
elif test "${overdrive_slot}" = "B"; then
  setenv bootargs "${default_bootargs} root=/dev/mmcblk0p3 ro overdrive.slot=B"
  setenv overdrive_part 0:3
else
  echo "Overdrive: no bootable slot"
  run bootcmd_rescue
fi
load mmc ${overdrive_part} ${kernel_addr_r} /boot/Image
booti ${kernel_addr_r} - ${fdt_addr_r}
