/**
 * struct kvm_run (linux/kvm.h): the page a vCPU shares with us. Exit details are read
 * from it and I/O results written into it in place, before the vCPU runs again.
 */
import { Struct, f } from '../../util/struct';

export const KVM_RUN = new Struct('kvm_run', 0x130, {
  request_interrupt_window: f(0, 'u8'), immediate_exit: f(1, 'u8'),
  exit_reason: f(8, 'u32'), ready_for_interrupt_injection: f(12, 'u8'), if_flag: f(13, 'u8'),
  flags: f(14, 'u16'), cr8: f(16, 'u64'), apic_base: f(24, 'u64'),
  // exit union at 32: io
  io_direction: f(32, 'u8'), io_size: f(33, 'u8'), io_port: f(34, 'u16'), io_count: f(36, 'u32'), io_data_offset: f(40, 'u64'),
  // mmio
  mmio_phys_addr: f(32, 'u64'), mmio_len: f(48, 'u32'), mmio_is_write: f(52, 'u8'),
  // internal error
  internal_suberror: f(32, 'u32'), internal_ndata: f(36, 'u32'),
  // system event
  system_event_type: f(32, 'u32'),
  // fail_entry
  fail_entry_reason: f(32, 'u64'),
});
export const KVM_RUN_MMIO_DATA = 40;
export const KVM_RUN_INTERNAL_DATA = 40;
export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;

export const EXIT = {
  UNKNOWN: 0, EXCEPTION: 1, IO: 2, HYPERCALL: 3, DEBUG: 4, HLT: 5, MMIO: 6, IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8, FAIL_ENTRY: 9, INTR: 10, INTERNAL_ERROR: 17, SYSTEM_EVENT: 24,
} as const;
/** What the vCPU thread reports when KVM_RUN returned EINTR after a kick. */
export const EXIT_KICKED = -1;
export const KVM_INTERNAL_ERROR_EMULATION = 1;
export const KVM_SYSTEM_EVENT_SHUTDOWN = 1;
export const KVM_SYSTEM_EVENT_RESET = 2;
export const KVM_SYSTEM_EVENT_CRASH = 3;

export function exitName(reason: number): string {
  if (reason === EXIT_KICKED) return 'kicked';
  if (reason < -1) return `KVM_RUN error ${-2 - reason}`;
  return Object.entries(EXIT).find(([, v]) => v === reason)?.[0] ?? `exit ${reason}`;
}
