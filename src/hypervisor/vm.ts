/**
 * A virtual machine: KVM objects, guest RAM, vCPUs, legacy devices, the boot image, and the
 * run state QMP reports (QEMU's status names). Device models and the monitor sit around
 * it; it knows nothing about XML, sockets or the CLI.
 *
 * Creation order matters to KVM and is enforced in `create`: TSS and identity-map
 * addresses, then the irqchip, then the PIT, then memory, then vCPUs (a vCPU created
 * before the irqchip gets no in-kernel LAPIC).
 */
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import { closeQuietly, native } from '../native';
import type { MappedMemory } from '../native/kvm';
import { KVM_PIT_SPEAKER_DUMMY, MAX_MAPPING_BYTES } from '../native/kvm';
import { BatonError } from '../util/errors';
import { loggerFor } from '../util/logger';
import { trace } from '../util/trace';
import { loadBootImage } from './boot/load';
import { ramRanges } from './boot/e820';
import { AcpiPm, PM1A_BASE, PM1A_LENGTH } from './devices/acpi-pm';
import { CmosRtc } from './devices/cmos-rtc';
import { I8042 } from './devices/i8042';
import { IoBus, IrqLine } from './devices/io-bus';
import { PCI_CONFIG_ADDRESS, PCI_CONFIG_DATA, PciHost } from './devices/pci';
import { Serial8250 } from './devices/serial';
import { GuestMemory } from './guest-memory';
import { GsiRouter } from './devices/virtio/gsi-router';
import { InstructionCompleter } from './x86/insn-completer';
import { KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR, MPTABLE_ADDR, MiB } from './layout';
import { PciIrqRoute, writeMptable } from './boot/mptable';
import { MachineConfig } from './machine-config';
import type { DeviceStateOwner } from './migration/vm-state';
import { Vcpu, VcpuHost, VcpuState, restoreVcpuState, saveVcpuState } from './vcpu';
import { vcpuThreadCpus } from './host-threads';
import { cpuModel, cpuidForVcpu, CpuidEntry } from './x86/cpu-model';
import { setupFpu, setupLint } from './x86/boot-regs';
import { getReg, getSegment, getSreg } from './x86/kvm-structs';
import { EXIT, KVM_INTERNAL_ERROR_EMULATION, KVM_RUN, exitName } from './x86/kvm-run';

const log = loggerFor('vm');

/** QEMU's RunState names, as query-status reports them. */
export type RunStatus = 'prelaunch' | 'running' | 'paused' | 'inmigrate' | 'postmigrate' | 'shutdown' | 'internal-error' | 'finish-migrate';

const COM1_PORT = 0x3f8;
const COM1_IRQ = 4;
const I8042_IRQ = 1;
const POST_PORT = 0x80;

export interface VmEvents {
  /** QMP-shaped lifecycle events: STOP, RESUME, SHUTDOWN, RESET, POWERDOWN. */
  event: [name: string, data: Record<string, unknown> | undefined];
  serialOutput: [bytes: Buffer];
  /** vCPUs started (true) or all parked (false): devices with a data path follow this. */
  running: [running: boolean];
}

export interface InternalErrorReport {
  vcpu: number;
  reason: string;
  suberror?: number;
  rip?: string;
  instructionBytes?: string;
}

export class Vm extends EventEmitter<VmEvents> implements VcpuHost {
  readonly pio = new IoBus('pio');
  readonly mmio = new IoBus('mmio');
  readonly pci = new PciHost();
  /** INTx routes of PCI devices, for the MP table. */
  private readonly pciRoutes: PciIrqRoute[] = [];
  private imageLoaded = false;
  gsiRouter!: GsiRouter;
  serial!: Serial8250;
  i8042!: I8042;
  pm!: AcpiPm;
  status: RunStatus = 'prelaunch';
  lastError?: InternalErrorReport;
  readonly vcpus: Vcpu[] = [];
  private pauseWaiters: (() => void)[] = [];
  /** Device state sections beyond the legacy devices (NICs add theirs). */
  readonly extraDeviceState: DeviceStateOwner[] = [];
  /**
   * Asked on KVM_EXIT_INTERNAL_ERROR before the VM gives up: completes, when it can, the
   * instruction the host's emulator rejected. Exists once guest RAM does (it decodes from it).
   */
  completer?: InstructionCompleter;
  /** The status to record in a save taken while we pause for it. */
  statusBeforeSave?: RunStatus;
  private cpuid: CpuidEntry[] = [];
  private powerOnState!: { vcpus: VcpuState[]; irqchips: Buffer[] };

  /** Guest RAM's fd (-1 until attached) and its mapping. */
  memFd = -1;
  memory!: GuestMemory;
  /** Guest RAM is reserved, waiting for an incoming migration's fd (see reserveMemory); `whole`: the DMA view's reservation. */
  private reservedRam?: { whole?: MappedMemory };
  /** RAM on both sides of the PCI hole as one view (device DMA), mapped once. */
  private wholeRamView?: Uint8Array;

  private constructor(
    readonly config: MachineConfig,
    readonly kvmFd: number,
    readonly vmFd: number,
  ) {
    super();
  }

  /**
   * Builds the machine with vCPUs parked. With `deferMemory` (an incoming migration whose
   * RAM arrives as an fd) everything but guest RAM is built now — KVM objects and vCPUs
   * cost milliseconds that must not fall inside the migration's pause — and the memory
   * comes later through `attachMemory`.
   */
  static create(config: MachineConfig, opts: { memFd?: number; loadImage?: boolean; deferMemory?: boolean } = {}): Vm {
    const kvmFd = openKvm();
    const vmFd = native.kvmCreateVm(kvmFd);
    native.kvmSetTssAddr(vmFd, KVM_TSS_ADDR);
    native.kvmSetIdentityMapAddr(vmFd, KVM_IDENTITY_MAP_ADDR);
    native.kvmCreateIrqchip(vmFd);
    native.kvmCreatePit2(vmFd, KVM_PIT_SPEAKER_DUMMY);
    const vm = new Vm(config, kvmFd, vmFd);
    vm.gsiRouter = new GsiRouter(vmFd);
    vm.createDevices();
    vm.createVcpus();
    if (!opts.deferMemory) {
      vm.attachMemory(opts.memFd ?? createRamFd(config, config.memory.sizeMiB * MiB));
      if (opts.loadImage !== false) vm.loadImageAndResetVcpus();
    } else {
      vm.reserveMemory();
    }
    return vm;
  }

  /**
   * For RAM that comes later: its address space, ArrayBuffers and KVM memory slots now,
   * so attaching only maps the fd over them. (Creating GiB-sized ArrayBuffers makes V8
   * collect garbage at once — milliseconds of CPU that, during a migration's set-up,
   * would be taken from the source's still-running guest.)
   */
  private reserveMemory(): void {
    const memBytes = this.config.memory.sizeMiB * MiB;
    const ranges = ramRanges(memBytes);
    this.memory = new GuestMemory(ranges.map((r, slot) => {
      const mapping = native.mmapReserve(r.size);
      native.kvmSetUserMemoryRegion(this.vmFd, { slot, flags: 0, guestPhysAddr: r.gpa, memorySize: r.size, userspaceAddr: mapping.address });
      return { ...r, bytes: new Uint8Array(mapping.buffer), hostAddress: mapping.address };
    }));
    const whole = ranges.length > 1 && memBytes <= MAX_MAPPING_BYTES ? native.mmapReserve(memBytes) : undefined;
    if (whole) this.wholeRamView = new Uint8Array(whole.buffer);
    this.reservedRam = { whole };
  }

  /** All of guest RAM as one byte view in fd-offset order, for device DMA (a chain may span the PCI hole). */
  wholeRam(): Uint8Array {
    if (this.memory.regions.length === 1) return this.memory.regions[0].bytes;
    if (!this.wholeRamView) {
      const total = this.config.memory.sizeMiB * MiB;
      if (total > MAX_MAPPING_BYTES) {
        throw new BatonError('ENOTSUP', `virtio DMA: guests with more than 4 GiB of RAM are not supported yet (this one has ${total} bytes)`);
      }
      this.wholeRamView = new Uint8Array(native.mmapShared(this.memFd, total, 0).buffer);
    }
    return this.wholeRamView;
  }

  get hasMemory(): boolean {
    return this.memFd >= 0;
  }

  /** Maps the memory fd as guest RAM and gives it to KVM. Takes ownership of the fd. */
  attachMemory(memFd: number): void {
    if (this.hasMemory) throw new BatonError('EMEMORY', `${this.config.name}: guest RAM is already attached`);
    const memBytes = this.config.memory.sizeMiB * MiB;
    const size = native.fstatSize(memFd);
    if (size < memBytes) throw new BatonError('EMEMORY', `memory fd holds ${size} bytes; the VM needs ${memBytes}`);
    const reserved = this.reservedRam;
    this.reservedRam = undefined;
    if (reserved) {
      // The views (and the devices holding them) stay: only the pages behind them change.
      for (const r of this.memory.regions) native.mmapSharedAt(r.hostAddress, memFd, r.size, r.fdOffset);
      if (reserved.whole) native.mmapSharedAt(reserved.whole.address, memFd, memBytes, 0);
    } else {
      this.memory = new GuestMemory(ramRanges(memBytes).map((r, slot) => {
        const mapping = native.mmapShared(memFd, r.size, r.fdOffset);
        native.kvmSetUserMemoryRegion(this.vmFd, { slot, flags: 0, guestPhysAddr: r.gpa, memorySize: r.size, userspaceAddr: mapping.address });
        return { ...r, bytes: new Uint8Array(mapping.buffer), hostAddress: mapping.address };
      }));
    }
    this.memFd = memFd;
    // Completing instructions the host's emulator rejects needs guest memory (to decode).
    this.completer = new InstructionCompleter(this.memory);
  }

  /** Guest RAM for an incoming migration that copies it: a fresh fd of the configured backing. */
  attachFreshMemory(): void {
    this.attachMemory(createRamFd(this.config, this.config.memory.sizeMiB * MiB));
  }

  /** An edge-triggered ISA interrupt line on the in-kernel PIC/IOAPIC. */
  irqLine(irq: number): IrqLine {
    return {
      pulse: () => { native.kvmIrqLine(this.vmFd, irq, 1); native.kvmIrqLine(this.vmFd, irq, 0); },
      set: (level) => native.kvmIrqLine(this.vmFd, irq, level ? 1 : 0),
    };
  }

  private createDevices(): void {
    this.serial = new Serial8250(this.irqLine(COM1_IRQ), (bytes) => this.emit('serialOutput', bytes));
    this.pio.register(COM1_PORT, 8, 'serial0', this.serial);
    this.i8042 = new I8042(this.irqLine(I8042_IRQ), () => this.guestReset('guest-reset'));
    this.pio.register(0x60, 1, 'i8042-data', { read: () => this.i8042.read(0), write: (_o, s, v) => this.i8042.write(0, s, v) });
    this.pio.register(0x64, 1, 'i8042-cmd', { read: () => this.i8042.read(4), write: (_o, s, v) => this.i8042.write(4, s, v) });
    this.pm = new AcpiPm(() => this.guestPowerOff());
    this.pio.register(PM1A_BASE, PM1A_LENGTH, 'acpi-pm1a', this.pm);
    this.pio.register(0x70, 2, 'cmos-rtc', new CmosRtc());
    this.pio.register(PCI_CONFIG_ADDRESS, 4, 'pci-address', this.pci.addressPort);
    this.pio.register(PCI_CONFIG_DATA, 4, 'pci-data', this.pci.dataPort);
    // Port 0x80 is the POST/delay port Linux writes to for I/O delays: accept silently.
    this.pio.register(POST_PORT, 1, 'post', { read: () => 0xff, write: () => undefined });
  }

  private createVcpus(): void {
    const supported = native.kvmGetSupportedCpuid(this.kvmFd) as CpuidEntry[];
    const mmapSize = native.kvmGetVcpuMmapSize(this.kvmFd);
    for (let id = 0; id < this.config.vcpus; id++) {
      const fd = native.kvmCreateVcpu(this.vmFd, id);
      if (id === 0) this.cpuid = cpuModel(this.config.cpuModel, supported, safeTscKhz(fd));
      native.kvmSetCpuid2(fd, cpuidForVcpu(this.cpuid, id, this.config.vcpus));
      this.vcpus.push(new Vcpu(id, fd, mmapSize, this));
    }
    // A reset returns every vCPU (LAPIC, APIC base, mp_state...) and the irqchips to this.
    this.powerOnState = {
      vcpus: this.vcpus.map((v) => saveVcpuState(v.fd, [])),
      irqchips: [0, 1, 2].map((id) => native.kvmGetIrqchip(this.vmFd, id)),
    };
  }

  /** Loads kernel/initrd/cmdline/tables into RAM and puts every vCPU in its boot state. */
  loadImageAndResetVcpus(): void {
    const boot = loadBootImage(this.memory, this.config, this.pciRoutes);
    this.imageLoaded = true;
    for (const vcpu of this.vcpus) {
      const lapic = native.kvmGetLapic(vcpu.fd);
      setupLint(lapic);
      native.kvmSetLapic(vcpu.fd, lapic);
      if (vcpu.id !== 0) continue; // APs wait for INIT/SIPI from the BSP
      const sregs = native.kvmGetSregs(vcpu.fd);
      const regs = Buffer.alloc(native.structSizes.regs);
      boot.setupBsp(regs, sregs);
      native.kvmSetSregs(vcpu.fd, sregs);
      native.kvmSetRegs(vcpu.fd, regs);
      const fpu = Buffer.alloc(native.structSizes.fpu);
      setupFpu(fpu);
      native.kvmSetFpu(vcpu.fd, fpu);
    }
    log.info(`${this.config.name}: ${boot.description}`);
  }

  addPciRoute(route: PciIrqRoute): void {
    this.pciRoutes.push(route);
    if (this.imageLoaded) writeMptable(this.memory, MPTABLE_ADDR, this.config.vcpus, this.pciRoutes);
  }

  removePciRoute(slot: number): void {
    const i = this.pciRoutes.findIndex((r) => r.slot === slot);
    if (i >= 0) this.pciRoutes.splice(i, 1);
    if (this.imageLoaded) writeMptable(this.memory, MPTABLE_ADDR, this.config.vcpus, this.pciRoutes);
  }

  /** Starts vCPU threads (parked) — done before the guest may run. */
  startThreads(): void {
    for (const v of this.vcpus) {
      v.startThread();
      const cpus = vcpuThreadCpus(this.config.cpuPinning, v.id);
      if (cpus) native.threadSetAffinity(v.tid as number, cpus);
    }
  }

  setStatus(status: RunStatus): void {
    this.status = status;
  }

  /** `cont`: run every vCPU. */
  resume(): void {
    if (this.status === 'running') return;
    this.runVcpus();
    this.emit('event', 'RESUME', undefined);
  }

  private runVcpus(): void {
    // Devices first: a NIC moves the frames that queued while the VM was stopped into its
    // rings before the vCPUs run (waking a vCPU thread can cost this thread its core).
    this.status = 'running';
    this.emit('running', true);
    trace('vm: run vCPUs');
    for (const v of this.vcpus) v.resume();
  }

  /** `stop`: park every vCPU; resolves once all are out of KVM_RUN. */
  async pause(newStatus: RunStatus = 'paused', emitStop = true): Promise<void> {
    if (this.vcpus.every((v) => v.parked)) {
      if (this.status === 'running') { this.status = newStatus; if (emitStop) this.emit('event', 'STOP', undefined); }
      else if (newStatus !== 'paused') this.status = newStatus;
      return;
    }
    const parked = new Promise<void>((resolve) => this.pauseWaiters.push(resolve));
    for (const v of this.vcpus) v.requestPause();
    await parked;
    this.status = newStatus;
    if (emitStop) this.emit('event', 'STOP', undefined);
  }

  onParked(): void {
    if (!this.vcpus.every((v) => v.parked)) return;
    trace('vm: vCPUs parked');
    const waiters = this.pauseWaiters;
    this.pauseWaiters = [];
    this.emit('running', false);
    for (const w of waiters) w();
  }

  onFatalExit(vcpu: Vcpu, reason: number): boolean {
    if (reason === EXIT.SHUTDOWN) {
      // Triple fault: a PC resets.
      this.guestReset('guest-reset');
      return false;
    }
    if (reason === EXIT.SYSTEM_EVENT) {
      this.guestPowerOff();
      return false;
    }
    if (reason === EXIT.INTERNAL_ERROR && this.completer?.complete(vcpu)) return true;
    const report: InternalErrorReport = { vcpu: vcpu.id, reason: exitName(reason) };
    if (reason === EXIT.INTERNAL_ERROR) {
      Object.assign(report, this.describeInternalError(vcpu));
      const declined = this.completer?.lastDecline;
      if (declined && declined.vcpu === vcpu.id) report.reason += ` (not completed: ${declined.reason})`;
    }
    try {
      const regs = native.kvmGetRegs(vcpu.fd);
      const sregs = native.kvmGetSregs(vcpu.fd);
      const rip = getReg(regs, 'rip');
      report.rip = '0x' + rip.toString(16);
      report.instructionBytes = this.instructionBytes(vcpu.fd, rip, sregs);
    } catch (err) {
      log.warn(`could not read vCPU ${vcpu.id} state after ${report.reason}: ${(err as Error).message}`);
    }
    this.lastError = report;
    log.error(`${this.config.name}: vCPU ${vcpu.id} stopped: ${report.reason}` +
      (report.rip ? ` at RIP ${report.rip} bytes [${report.instructionBytes}]` : ''));
    void this.pause('internal-error', true);
    return false;
  }

  private describeInternalError(vcpu: Vcpu): Partial<InternalErrorReport> {
    const run = vcpu.runView;
    const suberror = KVM_RUN.num(run, 0, 'internal_suberror');
    return {
      suberror,
      reason: suberror === KVM_INTERNAL_ERROR_EMULATION ? 'emulation failure' : `KVM internal error, suberror ${suberror}`,
    };
  }

  /** Up to 16 bytes at CS:RIP, through the guest's page tables. */
  private instructionBytes(vcpuFd: number, rip: bigint, sregs: Buffer): string {
    const linear = BigInt(getSegment(sregs, 'cs').base) + rip;
    const cr0 = getSreg(sregs, 'cr0');
    let gpa = linear;
    if (cr0 & 0x8000_0000n) {
      const t = native.kvmTranslate(vcpuFd, linear);
      if (!t.valid) return '(RIP not mapped)';
      gpa = t.physicalAddress;
    }
    try {
      return [...this.memory.read(Number(gpa), 16)].map((b) => b.toString(16).padStart(2, '0')).join(' ');
    } catch {
      return '(RIP outside RAM)';
    }
  }

  /** The guest asked for power-off (ACPI S5): SHUTDOWN, then stop. */
  guestPowerOff(): void {
    void this.shutdown('guest-shutdown', true);
  }

  private guestReset(reason: string): void {
    if (this.config.onReboot === 'destroy') {
      void this.shutdown(reason, true);
      return;
    }
    void this.reset(reason);
  }

  async shutdown(reason: string, guest: boolean): Promise<void> {
    if (this.status === 'shutdown') return;
    await this.pause('shutdown', false);
    this.emit('event', 'SHUTDOWN', { guest, reason });
  }

  /** system_reset and guest reboots: reload the boot image and restart from the entry point. */
  async reset(reason = 'host-qmp-system-reset'): Promise<void> {
    const wasRunning = this.status === 'running';
    await this.pause(this.status === 'running' ? 'paused' : this.status, false);
    for (const chip of this.powerOnState.irqchips) native.kvmSetIrqchip(this.vmFd, chip);
    this.vcpus.forEach((v, i) => restoreVcpuState(v.fd, this.powerOnState.vcpus[i]));
    this.loadImageAndResetVcpus();
    this.lastError = undefined;
    this.emit('event', 'RESET', { guest: reason.startsWith('guest'), reason });
    // As QEMU: a running guest runs on; a stopped or failed one waits in prelaunch for `cont`.
    if (wasRunning) this.runVcpus();
    else this.status = 'prelaunch';
  }

  /** system_powerdown: the graceful request, Ctrl-Alt-Del on the keyboard. */
  requestPowerdown(): void {
    this.emit('event', 'POWERDOWN', undefined);
    this.i8042.sendCtrlAltDel();
  }

  /** Stops threads and closes every fd this VM owns. */
  destroy(): void {
    for (const v of this.vcpus) v.stopThread();
    for (const v of this.vcpus) closeQuietly(v.fd);
    closeQuietly(this.vmFd);
    closeQuietly(this.kvmFd);
    if (this.hasMemory) closeQuietly(this.memFd);
  }

}

function openKvm(): number {
  try {
    return native.kvmOpen('/dev/kvm');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new BatonError('ENOKVM', `cannot open /dev/kvm (${e.code}): baton-hv needs KVM; check that the kvm module is loaded and you may open the device`);
  }
}

function createRamFd(config: MachineConfig, bytes: number): number {
  let fd: number;
  if (config.memory.backing === 'file') {
    const path = config.memory.path as string;
    fd = fs.openSync(path, fs.existsSync(path) ? 'r+' : 'w+', 0o600);
    // fs fds are not close-on-exec in Node; dup through the addon would be neater but this one stays with us.
  } else {
    fd = native.memfdCreate(`baton-ram-${config.name}`, {});
  }
  native.ftruncate(fd, bytes);
  return fd;
}

function safeTscKhz(vcpuFd: number): number {
  try {
    return native.kvmGetTscKhz(vcpuFd);
  } catch {
    return 0;
  }
}

