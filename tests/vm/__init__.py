"""The ``make e2e-vm`` infrastructure: a real GPT disk with GRUB and A/B Debian slots in QEMU.

Not tests themselves (no ``test_*.py`` here, so ``make test`` never runs them): building blocks
for the end-to-end proof. :mod:`tests.vm.rootfs` builds slot images, :mod:`tests.vm.disk`
assembles and reads back the disk, :mod:`tests.vm.qemu` boots it, :mod:`tests.vm.smoke` checks
the whole layer (``python -m tests.vm.smoke``).
"""
