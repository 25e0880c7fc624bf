/**
 * The MSRs a vCPU's saved state includes (those KVM lists as supported, from this set):
 * what the guest kernel programs and expects back after a restore — syscall entry points,
 * TSC and its deadline, PAT, and KVM's paravirtual clock/EOI/steal-time MSRs.
 */
export const MSR_IA32_TSC = 0x10;
export const SAVED_MSRS: readonly number[] = [
  0x10, // IA32_TSC
  0x174, 0x175, 0x176, // SYSENTER_CS/ESP/EIP
  0x1a0, // IA32_MISC_ENABLE
  0x277, // IA32_PAT
  0x6e0, // IA32_TSC_DEADLINE
  0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084, // STAR, LSTAR, CSTAR, SFMASK
  0xc0000102, // KERNEL_GS_BASE
  0xc0000103, // TSC_AUX
  0x4b564d00, 0x4b564d01, // KVM wall clock / system time (new)
  0x4b564d02, 0x4b564d03, 0x4b564d04, // async PF, steal time, PV EOI
  0x11, 0x12, // KVM wall clock / system time (old)
];
