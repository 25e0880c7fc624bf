/**
 * Types for the KVM, vCPU-thread and memory half of the native addon (contract:
 * src/native/API.md), and the kernel byte layouts TypeScript reads and writes in place.
 *
 * Offsets below were checked against <linux/kvm.h> (x86_64, linux-libc-dev 6.1) with offsetof();
 * native/src/kvm_headers.h static_asserts the kvm_run ones at build time.
 */

/** A file descriptor, as a plain number. */
export type Fd = number;

/** One `struct kvm_cpuid_entry2`. */
export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

export interface UserMemoryRegion {
  slot: number;
  /** `KVM_MEM_LOG_DIRTY_PAGES` and/or `KVM_MEM_READONLY`; default 0. */
  flags?: number;
  guestPhysAddr: bigint | number;
  /** 0 deletes the slot. */
  memorySize: bigint | number;
  /** Host address of the backing mapping (`mmapShared(...).address`); may be omitted when deleting. */
  userspaceAddr?: bigint;
}

export type GsiRoute =
  | { gsi: number; type: 'irqchip'; irqchip: number; pin: number }
  | { gsi: number; type: 'msi'; addressLo: number; addressHi: number; data: number };

export interface IoeventfdOptions {
  addr: number | bigint;
  /** 0 (any length, with KVM_CAP_IOEVENTFD_ANY_LENGTH), 1, 2, 4 or 8. */
  len: number;
  fd: Fd;
  pio: boolean;
  datamatch?: number | bigint;
  deassign?: boolean;
}

export interface IrqfdOptions {
  gsi: number;
  fd: Fd;
  resampleFd?: Fd;
  deassign?: boolean;
}

export interface Translation {
  physicalAddress: bigint;
  valid: boolean;
  writeable: boolean;
  usermode: boolean;
}

/** Sizes in bytes of the raw kernel structs that travel as Buffers. */
export interface StructSizes {
  regs: number;
  sregs: number;
  fpu: number;
  xsave: number;
  xcrs: number;
  lapic: number;
  vcpuEvents: number;
  mpState: number;
  debugRegs: number;
  irqchip: number;
  pit2: number;
  clock: number;
  run: number;
}

/** `onExit` reason: `kvm_run.exit_reason` (>= 0), `VCPU_EXIT_KICKED`, or `-2 - errno`. */
export type VcpuExitHandler = (exitReason: number) => void;

export interface VcpuThread {
  /** The vCPU's `kvm_run` mapping (the whole `kvmGetVcpuMmapSize` area, PIO data page included). */
  readonly run: ArrayBuffer;
  /** Linux tid of the vCPU thread. */
  readonly tid: number;
  /** Let the parked thread enter KVM_RUN again. Throws if it is not parked (no exit pending). */
  /** With `immediateExit`, KVM completes the handled exit's I/O and returns at once (reason -1). */
  resume(immediateExit?: boolean): void;
  /** Make the thread leave KVM_RUN promptly; the next `onExit` is `VCPU_EXIT_KICKED` (or the exit already on its way). */
  kick(): void;
  /** End the thread (kick + join); idempotent; the vCPU fd stays open. */
  stop(): void;
}

export interface MappedMemory {
  buffer: ArrayBuffer;
  /** Host virtual address of the mapping, for `kvmSetUserMemoryRegion`. */
  address: bigint;
}

type RawGet = (vcpuFd: Fd) => Buffer;
type RawSet = (vcpuFd: Fd, state: Buffer) => void;

/** The KVM, vCPU-thread and memory functions of `baton_native.node`. */
export interface KvmNative {
  // /dev/kvm and VM
  kvmOpen(path?: string): Fd;
  kvmGetApiVersion(kvmFd: Fd): number;
  kvmCheckExtension(fd: Fd, cap: number): number;
  kvmGetVcpuMmapSize(kvmFd: Fd): number;
  kvmGetSupportedCpuid(kvmFd: Fd): CpuidEntry[];
  kvmGetMsrIndexList(kvmFd: Fd): number[];
  kvmGetMsrFeatureIndexList(kvmFd: Fd): number[];
  kvmCreateVm(kvmFd: Fd): Fd;
  /** KVM_ENABLE_CAP on a VM or vCPU fd, at most 4 args. */
  kvmEnableCap(fd: Fd, cap: number, args?: (number | bigint)[]): void;
  kvmSetTssAddr(vmFd: Fd, addr: number): void;
  kvmSetIdentityMapAddr(vmFd: Fd, addr: bigint | number): void;
  kvmCreateIrqchip(vmFd: Fd): void;
  kvmCreatePit2(vmFd: Fd, flags: number): void;
  kvmSetUserMemoryRegion(vmFd: Fd, region: UserMemoryRegion): void;
  /** The bitmap must hold ceil(pages / 64) * 8 bytes; a smaller one fails with EFAULT. */
  kvmGetDirtyLog(vmFd: Fd, slot: number, bitmap: Buffer): void;
  /** Needs KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled; firstPage a multiple of 64. */
  kvmClearDirtyLog(vmFd: Fd, slot: number, firstPage: number | bigint, numPages: number, bitmap: Buffer): void;
  kvmIrqLine(vmFd: Fd, irq: number, level: 0 | 1): void;
  kvmSetGsiRouting(vmFd: Fd, entries: GsiRoute[]): void;
  kvmIoeventfd(vmFd: Fd, options: IoeventfdOptions): void;
  kvmIrqfd(vmFd: Fd, options: IrqfdOptions): void;
  kvmGetIrqchip(vmFd: Fd, chipId: number): Buffer;
  kvmSetIrqchip(vmFd: Fd, state: Buffer): void;
  kvmGetPit2(vmFd: Fd): Buffer;
  kvmSetPit2(vmFd: Fd, state: Buffer): void;
  kvmGetClock(vmFd: Fd): Buffer;
  kvmSetClock(vmFd: Fd, state: Buffer): void;
  kvmCreateVcpu(vmFd: Fd, id: number): Fd;

  // vCPU state (raw kernel structs, sizes in structSizes)
  kvmGetRegs: RawGet;
  kvmSetRegs: RawSet;
  kvmGetSregs: RawGet;
  kvmSetSregs: RawSet;
  kvmGetFpu: RawGet;
  kvmSetFpu: RawSet;
  kvmGetXsave: RawGet;
  kvmSetXsave: RawSet;
  kvmGetXcrs: RawGet;
  kvmSetXcrs: RawSet;
  kvmGetLapic: RawGet;
  kvmSetLapic: RawSet;
  kvmGetVcpuEvents: RawGet;
  kvmSetVcpuEvents: RawSet;
  kvmGetMpState: RawGet;
  kvmSetMpState: RawSet;
  kvmGetDebugRegs: RawGet;
  kvmSetDebugRegs: RawSet;
  /** Values of the MSRs KVM read; shorter than `indices` when KVM refused `indices[result.length]`. */
  kvmGetMsrs(vcpuFd: Fd, indices: number[]): bigint[];
  /** Returns how many entries KVM set (it stops at the first refusal). */
  kvmSetMsrs(vcpuFd: Fd, entries: [number, bigint][]): number;
  kvmSetCpuid2(vcpuFd: Fd, entries: CpuidEntry[]): void;
  kvmGetTscKhz(vcpuFd: Fd): number;
  kvmSetTscKhz(vcpuFd: Fd, khz: number): void;
  kvmTranslate(vcpuFd: Fd, linearAddr: bigint): Translation;

  structSizes: StructSizes;
  constants: Record<string, number>;

  // vCPU threads
  vcpuThreadStart(vcpuFd: Fd, mmapSize: number, onExit: VcpuExitHandler): VcpuThread;
  /** The realtime signal kick() sends (SIGRTMIN+4). */
  vcpuKickSignal: number;

  // Threads (native/src/sched.cc)
  /** Scheduling class of one of this process's threads (its nice value stays). */
  threadSetScheduling(tid: number, policy: 'normal' | 'idle'): void;
  /** Host CPUs one of this process's threads may run on (sched_setaffinity). */
  threadSetAffinity(tid: number, cpus: number[]): void;

  // Memory
  memfdCreate(name: string, options?: { allowSealing?: boolean; hugetlb?: boolean }): Fd;
  ftruncate(fd: Fd, size: number | bigint): void;
  fstatSize(fd: Fd): number;
  /** At most MAX_MAPPING_BYTES per mapping; offset page-aligned. */
  mmapShared(fd: Fd, size: number | bigint, offset?: number | bigint): MappedMemory;
  /** Address space (PROT_NONE) with its ArrayBuffer, for RAM whose fd comes later: see mmapSharedAt. */
  mmapReserve(size: number | bigint): MappedMemory;
  /** Maps `fd` over the whole reservation at `address` (MAP_FIXED); its ArrayBuffer then sees the fd's pages. */
  mmapSharedAt(address: bigint, fd: Fd, size: number | bigint, offset?: number | bigint): void;
  /** Only a whole mapping made by mmapShared; detaches its ArrayBuffer first. */
  munmap(address: bigint, size: number | bigint): void;
  openFile(path: string, flags: number, mode?: number): Fd;
}

/** Largest single mmapShared window: Node 20 external ArrayBuffers are Buffers, capped at 2^32 bytes. */
export const MAX_MAPPING_BYTES = 2 ** 32;

/** `onExit` reason when KVM_RUN returned EINTR because of kick(). */
export const VCPU_EXIT_KICKED = -1;

/** errno of a failed KVM_RUN from an `onExit` reason, or undefined when the reason is not a failure. */
export function vcpuRunErrno(exitReason: number): number | undefined {
  return exitReason <= -2 ? -2 - exitReason : undefined;
}

// ---- constants (values of <linux/kvm.h>; the full set is also in native `constants`) ----

export const KVM_API_VERSION = 12;

export const KVM_EXIT_UNKNOWN = 0;
export const KVM_EXIT_EXCEPTION = 1;
export const KVM_EXIT_IO = 2;
export const KVM_EXIT_HYPERCALL = 3;
export const KVM_EXIT_DEBUG = 4;
export const KVM_EXIT_HLT = 5;
export const KVM_EXIT_MMIO = 6;
export const KVM_EXIT_IRQ_WINDOW_OPEN = 7;
export const KVM_EXIT_SHUTDOWN = 8;
export const KVM_EXIT_FAIL_ENTRY = 9;
export const KVM_EXIT_INTR = 10;
export const KVM_EXIT_INTERNAL_ERROR = 17;
export const KVM_EXIT_SYSTEM_EVENT = 24;

export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;

export const KVM_INTERNAL_ERROR_EMULATION = 1;

export const KVM_CAP_IRQCHIP = 0;
export const KVM_CAP_HLT = 1;
export const KVM_CAP_USER_MEMORY = 3;
export const KVM_CAP_SET_TSS_ADDR = 4;
export const KVM_CAP_NR_MEMSLOTS = 10;
export const KVM_CAP_PIT2 = 33;
export const KVM_CAP_IOEVENTFD = 36;
export const KVM_CAP_IRQFD = 32;
export const KVM_CAP_SET_IDENTITY_MAP_ADDR = 37;
export const KVM_CAP_ADJUST_CLOCK = 39;
export const KVM_CAP_VCPU_EVENTS = 41;
export const KVM_CAP_DEBUGREGS = 50;
export const KVM_CAP_XSAVE = 55;
export const KVM_CAP_XCRS = 56;
export const KVM_CAP_TSC_CONTROL = 60;
export const KVM_CAP_GET_TSC_KHZ = 61;
export const KVM_CAP_IMMEDIATE_EXIT = 136;
export const KVM_CAP_GET_MSR_FEATURES = 153;
export const KVM_CAP_NESTED_STATE = 157;
export const KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168;

export const KVM_MEM_LOG_DIRTY_PAGES = 1;
export const KVM_MEM_READONLY = 2;
export const KVM_PIT_SPEAKER_DUMMY = 1;

export const KVM_IRQCHIP_PIC_MASTER = 0;
export const KVM_IRQCHIP_PIC_SLAVE = 1;
export const KVM_IRQCHIP_IOAPIC = 2;

export const KVM_MP_STATE_RUNNABLE = 0;
export const KVM_MP_STATE_HALTED = 3;

export const KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1;

// ---- byte layouts ----

/** `struct kvm_run`: fixed header, then the per-exit union at 32. */
export const KVM_RUN = {
  requestInterruptWindow: 0, // u8
  immediateExit: 1, // u8
  exitReason: 8, // u32
  readyForInterruptInjection: 12, // u8
  ifFlag: 13, // u8
  flags: 14, // u16
  cr8: 16, // u64
  apicBase: 24, // u64
  exitUnion: 32,
} as const;

/** `kvm_run.io` (KVM_EXIT_IO): the data lives at `kvm_run + dataOffset`, `count` items of `size` bytes. */
export const KVM_RUN_IO = {
  direction: 32, // u8, KVM_EXIT_IO_IN / KVM_EXIT_IO_OUT
  size: 33, // u8
  port: 34, // u16
  count: 36, // u32
  dataOffset: 40, // u64, from the start of kvm_run
} as const;

/** `kvm_run.mmio` (KVM_EXIT_MMIO). */
export const KVM_RUN_MMIO = {
  physAddr: 32, // u64
  data: 40, // u8[8]
  len: 48, // u32
  isWrite: 52, // u8
} as const;

/** `kvm_run.internal` (KVM_EXIT_INTERNAL_ERROR). */
export const KVM_RUN_INTERNAL = {
  suberror: 32, // u32
  ndata: 36, // u32
  data: 40, // u64[16]
} as const;

/** `kvm_run.fail_entry` (KVM_EXIT_FAIL_ENTRY). */
export const KVM_RUN_FAIL_ENTRY = {
  hardwareEntryFailureReason: 32, // u64
  cpu: 40, // u32
} as const;

/** `kvm_run.system_event` (KVM_EXIT_SYSTEM_EVENT). */
export const KVM_RUN_SYSTEM_EVENT = {
  type: 32, // u32
  ndata: 36, // u32
  data: 40, // u64[16]
} as const;

/** `struct kvm_regs`: 18 u64 in this order. */
export const KVM_REGS = {
  rax: 0,
  rbx: 8,
  rcx: 16,
  rdx: 24,
  rsi: 32,
  rdi: 40,
  rsp: 48,
  rbp: 56,
  r8: 64,
  r9: 72,
  r10: 80,
  r11: 88,
  r12: 96,
  r13: 104,
  r14: 112,
  r15: 120,
  rip: 128,
  rflags: 136,
} as const;

/** `struct kvm_sregs`: segments (KVM_SEGMENT layout), descriptor tables (KVM_DTABLE), control registers. */
export const KVM_SREGS = {
  cs: 0,
  ds: 24,
  es: 48,
  fs: 72,
  gs: 96,
  ss: 120,
  tr: 144,
  ldt: 168,
  gdt: 192,
  idt: 208,
  cr0: 224, // u64
  cr2: 232,
  cr3: 240,
  cr4: 248,
  cr8: 256,
  efer: 264,
  apicBase: 272,
  interruptBitmap: 280, // u64[4]
} as const;

/** `struct kvm_segment` (24 bytes), relative to the segment's offset in KVM_SREGS. */
export const KVM_SEGMENT = {
  base: 0, // u64
  limit: 8, // u32
  selector: 12, // u16
  type: 14, // u8
  present: 15,
  dpl: 16,
  db: 17,
  s: 18,
  l: 19,
  g: 20,
  avl: 21,
  unusable: 22,
  size: 24,
} as const;

/** `struct kvm_dtable` (16 bytes). */
export const KVM_DTABLE = {
  base: 0, // u64
  limit: 8, // u16
  size: 16,
} as const;
