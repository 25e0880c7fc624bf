/**
 * KVM ioctl wrappers against the real /dev/kvm: queries, VM and vCPU state round trips,
 * dirty logging, eventfd wiring, and the errors every wrapper throws.
 */
import * as fs from 'fs';
import type { IoNative } from '../../src/native/io';
import * as kvm from '../../src/native/kvm';
import {
  KVM_CAP_GET_TSC_KHZ,
  KVM_CAP_IRQCHIP,
  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
  KVM_CAP_NR_MEMSLOTS,
  KVM_CAP_XCRS,
  KVM_CAP_XSAVE,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  KVM_EXIT_HLT,
  KVM_IRQCHIP_IOAPIC,
  KVM_IRQCHIP_PIC_MASTER,
  KVM_IRQCHIP_PIC_SLAVE,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_REGS,
  KvmNative,
} from '../../src/native/kvm';
import { ExitQueue, TinyVm, argError, createTinyVm, itKvm, native, startVcpu } from './realModeGuest';


const PAGE = 4096;
const MSR_IA32_TSC = 0x10;
const MSR_IA32_SYSENTER_CS = 0x174;

/** The fdio half of the same addon, for the eventfds these tests wire to KVM. */
const fdio = native as unknown as IoNative;

function bitSet(bitmap: Buffer, bit: number): boolean {
  return (bitmap[bit >> 3] & (1 << (bit & 7))) !== 0;
}

/** An fd number that is certainly closed. */
function closedFd(): number {
  const fd = fs.openSync('/dev/null', 'r');
  fs.closeSync(fd);
  return fd;
}

describe('KVM queries', () => {
  let kvmFd: number;
  beforeAll(() => {
    kvmFd = native.kvmOpen();
  });
  afterAll(() => fs.closeSync(kvmFd));

  itKvm('reports the API version, extensions and the vCPU mmap size', () => {
    expect(native.kvmGetApiVersion(kvmFd)).toBe(kvm.KVM_API_VERSION);
    expect(native.kvmCheckExtension(kvmFd, KVM_CAP_IRQCHIP)).toBeGreaterThan(0);
    expect(native.kvmCheckExtension(kvmFd, KVM_CAP_NR_MEMSLOTS)).toBeGreaterThanOrEqual(32);
    expect(native.kvmGetVcpuMmapSize(kvmFd)).toBeGreaterThanOrEqual(native.structSizes.run);
  });

  itKvm('lists the supported CPUID leaves and the MSRs', () => {
    const cpuid = native.kvmGetSupportedCpuid(kvmFd);
    const leaf0 = cpuid.find((e) => e.function === 0);
    expect(leaf0).toBeDefined();
    // Leaf 0's vendor string: "GenuineIntel" or "AuthenticAMD" (ebx, edx, ecx).
    const vendor = Buffer.alloc(12);
    vendor.writeUInt32LE(leaf0!.ebx, 0);
    vendor.writeUInt32LE(leaf0!.edx, 4);
    vendor.writeUInt32LE(leaf0!.ecx, 8);
    expect(vendor.toString('latin1')).toMatch(/^(GenuineIntel|AuthenticAMD|HygonGenuine)$/);
    for (const e of cpuid) {
      expect(Object.keys(e).sort()).toEqual(['eax', 'ebx', 'ecx', 'edx', 'flags', 'function', 'index']);
    }

    const msrs = native.kvmGetMsrIndexList(kvmFd);
    expect(msrs).toContain(MSR_IA32_SYSENTER_CS);
    expect(msrs.length).toBeGreaterThan(10);
    expect(Array.isArray(native.kvmGetMsrFeatureIndexList(kvmFd))).toBe(true);
  });

  itKvm('exports struct sizes and constants that match src/native/kvm.ts', () => {
    expect(native.structSizes).toEqual({
      regs: 144,
      sregs: 312,
      fpu: 416,
      xsave: 4096,
      xcrs: 392,
      lapic: 1024,
      vcpuEvents: 64,
      mpState: 4,
      debugRegs: 128,
      irqchip: 520,
      pit2: 112,
      clock: 48,
      run: 2352,
    });
    for (const [name, value] of Object.entries(kvm)) {
      if (/^KVM_[A-Z0-9_]+$/.test(name) && typeof value === 'number') {
        expect([name, native.constants[name]]).toEqual([name, value]);
      }
    }
    expect(native.vcpuKickSignal).toBeGreaterThan(31); // a realtime signal, not SIGUSR1
  });
});

describe('VM and vCPU state', () => {
  let vm: TinyVm;
  beforeAll(() => {
    vm = createTinyVm({ code: [0xf4], irqchip: true });
  });
  afterAll(() => vm.close());

  const vcpuState: [string, (fd: number) => Buffer, (fd: number, b: Buffer) => void, keyof KvmNative['structSizes']][] =
    [
      ['regs', (fd) => native.kvmGetRegs(fd), (fd, b) => native.kvmSetRegs(fd, b), 'regs'],
      ['sregs', (fd) => native.kvmGetSregs(fd), (fd, b) => native.kvmSetSregs(fd, b), 'sregs'],
      ['fpu', (fd) => native.kvmGetFpu(fd), (fd, b) => native.kvmSetFpu(fd, b), 'fpu'],
      ['lapic', (fd) => native.kvmGetLapic(fd), (fd, b) => native.kvmSetLapic(fd, b), 'lapic'],
      ['vcpu events', (fd) => native.kvmGetVcpuEvents(fd), (fd, b) => native.kvmSetVcpuEvents(fd, b), 'vcpuEvents'],
      ['mp state', (fd) => native.kvmGetMpState(fd), (fd, b) => native.kvmSetMpState(fd, b), 'mpState'],
      ['debug regs', (fd) => native.kvmGetDebugRegs(fd), (fd, b) => native.kvmSetDebugRegs(fd, b), 'debugRegs'],
    ];

  it.each(vcpuState)('%s: get, set back, get again gives the same bytes', (_name, get, set, size) => {
    const before = get(vm.vcpuFd);
    expect(before.length).toBe(native.structSizes[size]);
    set(vm.vcpuFd, before);
    expect(get(vm.vcpuFd).equals(before)).toBe(true);
  });

  itKvm('xsave and xcrs round-trip when the host supports them', () => {
    if (native.kvmCheckExtension(vm.kvmFd, KVM_CAP_XSAVE) <= 0 || native.kvmCheckExtension(vm.kvmFd, KVM_CAP_XCRS) <= 0) {
      console.warn('skipped: this KVM lacks KVM_CAP_XSAVE/KVM_CAP_XCRS');
      return;
    }
    const xsave = native.kvmGetXsave(vm.vcpuFd);
    expect(xsave.length).toBe(native.structSizes.xsave);
    native.kvmSetXsave(vm.vcpuFd, xsave);
    expect(native.kvmGetXsave(vm.vcpuFd).equals(xsave)).toBe(true);
    const xcrs = native.kvmGetXcrs(vm.vcpuFd);
    native.kvmSetXcrs(vm.vcpuFd, xcrs);
    expect(native.kvmGetXcrs(vm.vcpuFd).equals(xcrs)).toBe(true);
  });

  itKvm('a changed register reads back', () => {
    const regs = native.kvmGetRegs(vm.vcpuFd);
    regs.writeBigUInt64LE(0x1234_5678_9abc_def0n, KVM_REGS.rbx);
    native.kvmSetRegs(vm.vcpuFd, regs);
    expect(native.kvmGetRegs(vm.vcpuFd).readBigUInt64LE(KVM_REGS.rbx)).toBe(0x1234_5678_9abc_def0n);
  });

  itKvm('irqchips (both PICs and the IOAPIC), PIT and clock round-trip', () => {
    for (const chip of [KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC]) {
      const state = native.kvmGetIrqchip(vm.vmFd, chip);
      expect(state.length).toBe(native.structSizes.irqchip);
      expect(state.readUInt32LE(0)).toBe(chip);
      native.kvmSetIrqchip(vm.vmFd, state);
      expect(native.kvmGetIrqchip(vm.vmFd, chip).equals(state)).toBe(true);
    }
    const pit = native.kvmGetPit2(vm.vmFd);
    expect(pit.length).toBe(native.structSizes.pit2);
    native.kvmSetPit2(vm.vmFd, pit);
    const clock = native.kvmGetClock(vm.vmFd);
    expect(clock.length).toBe(native.structSizes.clock);
    native.kvmSetClock(vm.vmFd, clock);
    // The clock keeps counting from the value set (ns; u64 at offset 0).
    expect(native.kvmGetClock(vm.vmFd).readBigUInt64LE(0)).toBeGreaterThanOrEqual(clock.readBigUInt64LE(0));
  });

  itKvm('reads and writes MSRs, sets CPUID, reads the TSC frequency, translates addresses', () => {
    const [tsc, sysenterCs] = native.kvmGetMsrs(vm.vcpuFd, [MSR_IA32_TSC, MSR_IA32_SYSENTER_CS]);
    expect(typeof tsc).toBe('bigint');
    expect(typeof sysenterCs).toBe('bigint');
    expect(native.kvmSetMsrs(vm.vcpuFd, [[MSR_IA32_SYSENTER_CS, 0x10n]])).toBe(1);
    expect(native.kvmGetMsrs(vm.vcpuFd, [MSR_IA32_SYSENTER_CS])).toEqual([0x10n]);
    // An MSR KVM does not know stops the list there.
    expect(native.kvmGetMsrs(vm.vcpuFd, [MSR_IA32_SYSENTER_CS, 0xdead_beef])).toEqual([0x10n]);

    native.kvmSetCpuid2(vm.vcpuFd, native.kvmGetSupportedCpuid(vm.kvmFd));
    if (native.kvmCheckExtension(vm.kvmFd, KVM_CAP_GET_TSC_KHZ) > 0) {
      expect(native.kvmGetTscKhz(vm.vcpuFd)).toBeGreaterThan(0);
    }
    // Real mode, no paging: linear == physical.
    expect(native.kvmTranslate(vm.vcpuFd, 0x1234n)).toEqual({
      physicalAddress: 0x1234n,
      valid: true,
      writeable: true,
      usermode: false,
    });
  });

  itKvm('drives interrupts: IRQ lines, GSI routes, irqfd', () => {
    native.kvmIrqLine(vm.vmFd, 4, 1);
    native.kvmIrqLine(vm.vmFd, 4, 0);
    const routes: kvm.GsiRoute[] = [];
    for (let pin = 0; pin < 16; pin++) {
      if (pin === 2) continue; // the slave PIC's cascade
      const picChip = pin < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE;
      routes.push({ gsi: pin, type: 'irqchip', irqchip: picChip, pin: pin % 8 });
      routes.push({ gsi: pin, type: 'irqchip', irqchip: KVM_IRQCHIP_IOAPIC, pin });
    }
    routes.push({ gsi: 24, type: 'msi', addressLo: 0xfee00000, addressHi: 0, data: 0x41 });
    native.kvmSetGsiRouting(vm.vmFd, routes);

    const eventFd = fdio.eventfdCreate(0, { nonblock: true });
    try {
      native.kvmIrqfd(vm.vmFd, { gsi: 24, fd: eventFd });
      native.kvmIrqfd(vm.vmFd, { gsi: 24, fd: eventFd, deassign: true });
    } finally {
      fs.closeSync(eventFd);
    }
  });
});

describe('guest-driven KVM features', () => {
  let vm: TinyVm | undefined;
  afterEach(() => {
    vm?.close();
    vm = undefined;
  });

  async function runToHalt(tiny: TinyVm): Promise<void> {
    const exits = new ExitQueue();
    const thread = startVcpu(tiny, exits);
    try {
      thread.resume();
      expect(await exits.next()).toBe(KVM_EXIT_HLT);
    } finally {
      thread.stop();
    }
  }

  itKvm('dirty log: a page the guest writes shows in the bitmap, then the log is clean', async () => {
    const ramBytes = 256 * PAGE;
    vm = createTinyVm({
      ramBytes,
      slotFlags: KVM_MEM_LOG_DIRTY_PAGES,
      code: [
        0xc6, 0x06, 0x00, 0x30, 0x01, // mov byte [0x3000], 1
        0xc6, 0x06, 0x00, 0x70, 0x01, // mov byte [0x7000], 1
        0xf4, //                         hlt
      ],
    });
    await runToHalt(vm);
    const bitmap = Buffer.alloc(256 / 8);
    native.kvmGetDirtyLog(vm.vmFd, 0, bitmap);
    expect(bitSet(bitmap, 3)).toBe(true);
    expect(bitSet(bitmap, 7)).toBe(true);
    expect(bitSet(bitmap, 5)).toBe(false);
    expect(bitSet(bitmap, 200)).toBe(false);
    expect(vm.ram[0x3000]).toBe(1);
    // KVM_GET_DIRTY_LOG also re-arms logging: nothing is dirty until the guest writes again.
    native.kvmGetDirtyLog(vm.vmFd, 0, bitmap);
    expect(bitmap.equals(Buffer.alloc(bitmap.length))).toBe(true);

    // A bitmap too small for the slot is refused by the kernel, not written past.
    expect(() => native.kvmGetDirtyLog(vm!.vmFd, 0, Buffer.alloc(8))).toThrow(
      expect.objectContaining({ code: 'EFAULT', syscall: 'KVM_GET_DIRTY_LOG' }),
    );
    expect(() => native.kvmGetDirtyLog(vm!.vmFd, 0, Buffer.alloc(12))).toThrow(argError('kvmGetDirtyLog'));
    expect(() => native.kvmGetDirtyLog(vm!.vmFd, 9, bitmap)).toThrow(
      expect.objectContaining({ code: 'ENOENT', syscall: 'KVM_GET_DIRTY_LOG' }),
    );
  });

  itKvm('dirty log with manual protect: bits stay until kvmClearDirtyLog', async () => {
    const probe = native.kvmOpen();
    const supported = native.kvmCheckExtension(probe, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
    fs.closeSync(probe);
    if (!(supported & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)) {
      console.warn('skipped: this KVM lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2');
      return;
    }
    // The capability must be enabled before the slot exists, so build this VM by hand.
    const ramBytes = 64 * PAGE;
    vm = createTinyVm({ ramBytes, code: [0xc6, 0x06, 0x00, 0x50, 0x01, 0xf4] }); // mov byte [0x5000], 1; hlt
    native.kvmSetUserMemoryRegion(vm.vmFd, { slot: 0, guestPhysAddr: 0, memorySize: 0 });
    native.kvmEnableCap(vm.vmFd, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE]);
    native.kvmSetUserMemoryRegion(vm.vmFd, {
      slot: 0,
      flags: KVM_MEM_LOG_DIRTY_PAGES,
      guestPhysAddr: 0,
      memorySize: ramBytes,
      userspaceAddr: vm.memory.address,
    });
    await runToHalt(vm);
    const bitmap = Buffer.alloc(8);
    native.kvmGetDirtyLog(vm.vmFd, 0, bitmap);
    expect(bitSet(bitmap, 5)).toBe(true);
    native.kvmGetDirtyLog(vm.vmFd, 0, bitmap);
    expect(bitSet(bitmap, 5)).toBe(true); // not cleared by reading
    native.kvmClearDirtyLog(vm.vmFd, 0, 0, 64, bitmap);
    native.kvmGetDirtyLog(vm.vmFd, 0, bitmap);
    expect(bitSet(bitmap, 5)).toBe(false);
    expect(() => native.kvmClearDirtyLog(vm!.vmFd, 0, 0, 128, bitmap)).toThrow(argError('kvmClearDirtyLog'));
  });

  itKvm('ioeventfd: a guest port write signals the eventfd instead of exiting', async () => {
    vm = createTinyVm({
      code: [
        0xb0, 0x07, // mov al, 7
        0xe6, 0x80, // out 0x80, al
        0xf4, //       hlt
      ],
    });
    const eventFd = fdio.eventfdCreate(0, { nonblock: true });
    try {
      native.kvmIoeventfd(vm.vmFd, { addr: 0x80, len: 1, fd: eventFd, pio: true, datamatch: 7 });
      await runToHalt(vm); // the only exit is HLT: the OUT never reached userspace
      expect(fdio.eventfdRead(eventFd)).toBe(1n);
      native.kvmIoeventfd(vm.vmFd, { addr: 0x80, len: 1, fd: eventFd, pio: true, datamatch: 7, deassign: true });
    } finally {
      fs.closeSync(eventFd);
    }
  });
});

describe('KVM wrapper errors', () => {
  it('name the ioctl and the errno', () => {
    const closed = closedFd();
    const cases: [() => unknown, string][] = [
      [() => native.kvmCreateVcpu(closed, 0), 'KVM_CREATE_VCPU'],
      [() => native.kvmCreateVm(closed), 'KVM_CREATE_VM'],
      [() => native.kvmGetApiVersion(closed), 'KVM_GET_API_VERSION'],
      [() => native.kvmCheckExtension(closed, 0), 'KVM_CHECK_EXTENSION'],
      [() => native.kvmGetSupportedCpuid(closed), 'KVM_GET_SUPPORTED_CPUID'],
      [() => native.kvmGetMsrIndexList(closed), 'KVM_GET_MSR_INDEX_LIST'],
      [() => native.kvmSetTssAddr(closed, 0xfffbd000), 'KVM_SET_TSS_ADDR'],
      [() => native.kvmSetIdentityMapAddr(closed, 0xfffbc000n), 'KVM_SET_IDENTITY_MAP_ADDR'],
      [() => native.kvmCreateIrqchip(closed), 'KVM_CREATE_IRQCHIP'],
      [() => native.kvmCreatePit2(closed, 0), 'KVM_CREATE_PIT2'],
      [() => native.kvmEnableCap(closed, 0), 'KVM_ENABLE_CAP'],
      [
        () => native.kvmSetUserMemoryRegion(closed, { slot: 0, guestPhysAddr: 0, memorySize: 0 }),
        'KVM_SET_USER_MEMORY_REGION',
      ],
      [() => native.kvmGetDirtyLog(closed, 0, Buffer.alloc(8)), 'KVM_GET_DIRTY_LOG'],
      [() => native.kvmClearDirtyLog(closed, 0, 0, 64, Buffer.alloc(8)), 'KVM_CLEAR_DIRTY_LOG'],
      [() => native.kvmIrqLine(closed, 0, 1), 'KVM_IRQ_LINE'],
      [() => native.kvmSetGsiRouting(closed, []), 'KVM_SET_GSI_ROUTING'],
      [() => native.kvmIoeventfd(closed, { addr: 0, len: 1, fd: 0, pio: true }), 'KVM_IOEVENTFD'],
      [() => native.kvmIrqfd(closed, { gsi: 0, fd: 0 }), 'KVM_IRQFD'],
      [() => native.kvmGetIrqchip(closed, 0), 'KVM_GET_IRQCHIP'],
      [() => native.kvmSetIrqchip(closed, Buffer.alloc(native.structSizes.irqchip)), 'KVM_SET_IRQCHIP'],
      [() => native.kvmGetPit2(closed), 'KVM_GET_PIT2'],
      [() => native.kvmSetPit2(closed, Buffer.alloc(native.structSizes.pit2)), 'KVM_SET_PIT2'],
      [() => native.kvmGetClock(closed), 'KVM_GET_CLOCK'],
      [() => native.kvmSetClock(closed, Buffer.alloc(native.structSizes.clock)), 'KVM_SET_CLOCK'],
      [() => native.kvmGetRegs(closed), 'KVM_GET_REGS'],
      [() => native.kvmSetRegs(closed, Buffer.alloc(native.structSizes.regs)), 'KVM_SET_REGS'],
      [() => native.kvmGetSregs(closed), 'KVM_GET_SREGS'],
      [() => native.kvmGetFpu(closed), 'KVM_GET_FPU'],
      [() => native.kvmGetXsave(closed), 'KVM_GET_XSAVE'],
      [() => native.kvmGetXcrs(closed), 'KVM_GET_XCRS'],
      [() => native.kvmGetLapic(closed), 'KVM_GET_LAPIC'],
      [() => native.kvmGetVcpuEvents(closed), 'KVM_GET_VCPU_EVENTS'],
      [() => native.kvmGetMpState(closed), 'KVM_GET_MP_STATE'],
      [() => native.kvmGetDebugRegs(closed), 'KVM_GET_DEBUGREGS'],
      [() => native.kvmGetMsrs(closed, [MSR_IA32_TSC]), 'KVM_GET_MSRS'],
      [() => native.kvmSetMsrs(closed, [[MSR_IA32_TSC, 0n]]), 'KVM_SET_MSRS'],
      [() => native.kvmSetCpuid2(closed, []), 'KVM_SET_CPUID2'],
      [() => native.kvmGetTscKhz(closed), 'KVM_GET_TSC_KHZ'],
      [() => native.kvmSetTscKhz(closed, 1000000), 'KVM_SET_TSC_KHZ'],
      [() => native.kvmTranslate(closed, 0n), 'KVM_TRANSLATE'],
    ];
    for (const [call, ioctl] of cases) {
      let thrown: unknown;
      try {
        call();
      } catch (err) {
        thrown = err;
      }
      expect(thrown).toMatchObject({ code: 'EBADF', errno: 9, syscall: ioctl });
      expect((thrown as Error).message).toBe(`${ioctl} failed: EBADF (Bad file descriptor)`);
    }
  });

  it('report a path that cannot be opened and an fd that is not KVM', () => {
    expect(() => native.kvmOpen('/nonexistent/kvm')).toThrow(expect.objectContaining({ code: 'ENOENT', syscall: 'open' }));
    const notKvm = fs.openSync('/dev/null', 'r');
    try {
      expect(() => native.kvmCheckExtension(notKvm, 0)).toThrow(
        expect.objectContaining({ code: 'ENOTTY', syscall: 'KVM_CHECK_EXTENSION' }),
      );
    } finally {
      fs.closeSync(notKvm);
    }
  });

  it('reject bad arguments with a TypeError naming the function', () => {
    const anyNative = native as unknown as Record<string, (...args: unknown[]) => unknown>;
    expect(() => native.kvmSetRegs(0, Buffer.alloc(3))).toThrow(argError('kvmSetRegs'));
    expect(() => anyNative.kvmSetRegs(0, 'not a buffer')).toThrow(argError('kvmSetRegs'));
    expect(() => anyNative.kvmSetSregs(0, new Uint16Array(156))).toThrow(argError('kvmSetSregs'));
    expect(() => native.kvmSetIrqchip(0, Buffer.alloc(1))).toThrow(argError('kvmSetIrqchip'));
    expect(() => anyNative.kvmCreateVcpu('3', 0)).toThrow(argError('kvmCreateVcpu'));
    expect(() => anyNative.kvmCreateVcpu(1.5, 0)).toThrow(argError('kvmCreateVcpu'));
    expect(() => anyNative.kvmCreateVcpu(-1, 0)).toThrow(argError('kvmCreateVcpu'));
    expect(() => anyNative.kvmGetRegs()).toThrow(argError('kvmGetRegs'));
    expect(() => anyNative.kvmSetUserMemoryRegion(0, { slot: 0, guestPhysAddr: 0, memorySize: 4096 })).toThrow(
      argError('kvmSetUserMemoryRegion'),
    );
    expect(() => anyNative.kvmSetUserMemoryRegion(0, { slot: 0, guestPhysAddr: -1n, memorySize: 0 })).toThrow(
      argError('kvmSetUserMemoryRegion'),
    );
    expect(() => anyNative.kvmSetGsiRouting(0, [{ gsi: 0, type: 'bogus' }])).toThrow(argError('kvmSetGsiRouting'));
    expect(() => anyNative.kvmSetMsrs(0, [[1]])).toThrow(argError('kvmSetMsrs'));
    expect(() => anyNative.kvmSetCpuid2(0, [{ function: 0 }])).toThrow(argError('kvmSetCpuid2'));
    expect(() => anyNative.kvmIoeventfd(0, { addr: 0, len: 3, fd: 0, pio: 'yes' })).toThrow(argError('kvmIoeventfd'));
    expect(() => anyNative.kvmEnableCap(0, 0, [1, 2, 3, 4, 5])).toThrow(argError('kvmEnableCap'));
    expect(() => anyNative.kvmGetIrqchip(0, 3)).toThrow(argError('kvmGetIrqchip'));
  });
});
