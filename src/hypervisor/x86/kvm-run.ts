/**
 * struct kvm_run (linux/kvm.h): the page a vCPU shares with us. Exit details are read
 * from it and I/O results written into it in place, before the vCPU runs again.
 */
import * as K from '../../native/kvm';
import { Struct, f } from '../../util/struct';

// Offsets come from src/native/kvm.ts (checked there against the C headers' offsetof).
const H = K.KVM_RUN;
const IO = K.KVM_RUN_IO;
const MMIO = K.KVM_RUN_MMIO;
export const KVM_RUN = new Struct('kvm_run', 0x130, {
  request_interrupt_window: f(H.requestInterruptWindow, 'u8'), immediate_exit: f(H.immediateExit, 'u8'),
  exit_reason: f(H.exitReason, 'u32'), ready_for_interrupt_injection: f(H.readyForInterruptInjection, 'u8'),
  if_flag: f(H.ifFlag, 'u8'), flags: f(H.flags, 'u16'), cr8: f(H.cr8, 'u64'), apic_base: f(H.apicBase, 'u64'),
  io_direction: f(IO.direction, 'u8'), io_size: f(IO.size, 'u8'), io_port: f(IO.port, 'u16'), io_count: f(IO.count, 'u32'),
  io_data_offset: f(IO.dataOffset, 'u64'),
  mmio_phys_addr: f(MMIO.physAddr, 'u64'), mmio_len: f(MMIO.len, 'u32'), mmio_is_write: f(MMIO.isWrite, 'u8'),
  internal_suberror: f(K.KVM_RUN_INTERNAL.suberror, 'u32'), internal_ndata: f(K.KVM_RUN_INTERNAL.ndata, 'u32'),
  system_event_type: f(K.KVM_RUN_SYSTEM_EVENT.type, 'u32'),
  fail_entry_reason: f(K.KVM_RUN_FAIL_ENTRY.hardwareEntryFailureReason, 'u64'),
});
export const KVM_RUN_MMIO_DATA = MMIO.data;
export { KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT, KVM_INTERNAL_ERROR_EMULATION, VCPU_EXIT_KICKED as EXIT_KICKED } from '../../native/kvm';

/** Exit reasons by name (the numbers are linux/kvm.h's, defined once in src/native/kvm.ts). */
export const EXIT = {
  UNKNOWN: K.KVM_EXIT_UNKNOWN, EXCEPTION: K.KVM_EXIT_EXCEPTION, IO: K.KVM_EXIT_IO, HYPERCALL: K.KVM_EXIT_HYPERCALL,
  DEBUG: K.KVM_EXIT_DEBUG, HLT: K.KVM_EXIT_HLT, MMIO: K.KVM_EXIT_MMIO, IRQ_WINDOW_OPEN: K.KVM_EXIT_IRQ_WINDOW_OPEN,
  SHUTDOWN: K.KVM_EXIT_SHUTDOWN, FAIL_ENTRY: K.KVM_EXIT_FAIL_ENTRY, INTR: K.KVM_EXIT_INTR,
  INTERNAL_ERROR: K.KVM_EXIT_INTERNAL_ERROR, SYSTEM_EVENT: K.KVM_EXIT_SYSTEM_EVENT,
} as const;

export function exitName(reason: number): string {
  if (reason === K.VCPU_EXIT_KICKED) return 'kicked';
  if (reason < -1) return `KVM_RUN error ${-2 - reason}`;
  return Object.entries(EXIT).find(([, v]) => v === reason)?.[0] ?? `exit ${reason}`;
}
