/**
 * Named CPU models built from KVM's supported CPUID, like QEMU's `-cpu`:
 *  - `host`: everything KVM supports (host-passthrough).
 *  - `baton-pvm`: `host` minus what this class of host's instruction emulator cannot run
 *    at guest ring 0 (kvm-pvm: `lock cmpxchg16b` and the XSAVE family end in emulation
 *    failures — see shared/HOST-FACTS.md), plus everything that depends on XSAVE (AVX...).
 * Per-vCPU topology (APIC ids) is filled in by `cpuidForVcpu`.
 */
import { BatonError } from '../../util/errors';

import type { CpuidEntry } from '../../native/kvm';

export type { CpuidEntry };

export type CpuModelName = 'host' | 'baton-pvm';
export const CPU_MODELS: readonly CpuModelName[] = ['host', 'baton-pvm'];

const bit = (n: number) => (1 << n) >>> 0;

/** Leaf 1 ECX features hidden by baton-pvm, with why. */
const PVM_HIDDEN_LEAF1_ECX = {
  cx16: bit(13), // lock cmpxchg16b: emulation failure at ring 0
  xsave: bit(26), // xsave/xrstor: emulation failure at ring 0
  osxsave: bit(27),
  avx: bit(28), // needs XSAVE-managed state
  f16c: bit(29), // AVX-encoded
  fma: bit(12), // AVX-encoded
};
/** Leaf 7.0 EBX/ECX/EDX features that need XSAVE-managed state (AVX2, AVX-512, AMX...). */
const PVM_HIDDEN_LEAF7_EBX = bit(5) /* avx2 */ | bit(16) | bit(17) | bit(21) | bit(26) | bit(27) | bit(28) | bit(30) | bit(31);
const PVM_HIDDEN_LEAF7_ECX = bit(1) /* avx512vbmi */ | bit(6) | bit(11) | bit(12) | bit(14) | bit(9) | bit(10);
const PVM_HIDDEN_LEAF7_EDX = bit(2) | bit(3) | bit(8) | bit(23) | bit(22) | bit(24) | bit(25);
const HYPERVISOR_BIT = bit(31);

/** KVM_CPUID_SIGNATURE leaf and the VMware-style timing leaf (TSC and bus kHz) guests may read. */
const KVM_CPUID_SIGNATURE = 0x40000000;
const TIMING_LEAF = 0x40000010;
/** KVM's local APIC timer counts at 1 GHz. */
const LAPIC_BUS_KHZ = 1_000_000;

export function cpuModel(name: string, supported: readonly CpuidEntry[], tscKhz: number): CpuidEntry[] {
  if (!CPU_MODELS.includes(name as CpuModelName)) {
    throw new BatonError('ECPUMODEL', `unknown CPU model "${name}" (known: ${CPU_MODELS.join(', ')})`);
  }
  let entries = supported.map((e) => ({ ...e }));
  for (const e of entries) {
    if (e.function === 1) e.ecx = (e.ecx | HYPERVISOR_BIT) >>> 0;
  }
  if (name === 'baton-pvm') {
    const hide1 = Object.values(PVM_HIDDEN_LEAF1_ECX).reduce((a, b) => a | b, 0);
    entries = entries.filter((e) => e.function !== 0xd); // XSAVE state enumeration
    for (const e of entries) {
      if (e.function === 1) e.ecx = (e.ecx & ~hide1) >>> 0;
      if (e.function === 7 && e.index === 0) {
        e.ebx = (e.ebx & ~PVM_HIDDEN_LEAF7_EBX) >>> 0;
        e.ecx = (e.ecx & ~PVM_HIDDEN_LEAF7_ECX) >>> 0;
        e.edx = (e.edx & ~PVM_HIDDEN_LEAF7_EDX) >>> 0;
      }
    }
  }
  if (tscKhz > 0) {
    entries = entries.filter((e) => e.function !== TIMING_LEAF);
    const sig = entries.find((e) => e.function === KVM_CPUID_SIGNATURE);
    if (sig) sig.eax = Math.max(sig.eax, TIMING_LEAF);
    entries.push({ function: TIMING_LEAF, index: 0, flags: 0, eax: tscKhz, ebx: LAPIC_BUS_KHZ, ecx: 0, edx: 0 });
  }
  return entries;
}

/** The model's entries with this vCPU's APIC id and the VM's CPU count filled in. */
export function cpuidForVcpu(model: readonly CpuidEntry[], vcpuId: number, vcpuCount: number): CpuidEntry[] {
  return model.map((src) => {
    const e = { ...src };
    if (e.function === 1) {
      // EBX[31:24] initial APIC id, [23:16] logical processors; HTT when more than one.
      e.ebx = ((e.ebx & 0x0000ffff) | (vcpuCount << 16) | (vcpuId << 24)) >>> 0;
      e.edx = vcpuCount > 1 ? (e.edx | bit(28)) >>> 0 : (e.edx & ~bit(28)) >>> 0;
    }
    if (e.function === 0xb || e.function === 0x1f) e.edx = vcpuId;
    return e;
  });
}
