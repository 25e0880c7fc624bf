/**
 * One vCPU: its KVM fd, its native thread, and the handling of the exits that thread
 * hands to the event loop. Port and MMIO exits are completed in place in kvm_run and the
 * thread resumed; a pause is a kick, after which the vCPU parks in userspace (kicked exit)
 * with any I/O it had in flight completed first (immediate_exit makes KVM finish it).
 */
import fs from 'node:fs';
import { native } from '../native';
import { loggerFor } from '../util/logger';
import { IoBus } from './devices/io-bus';
import { EXIT, EXIT_KICKED, KVM_EXIT_IO_IN, KVM_RUN, KVM_RUN_MMIO_DATA, exitName } from './x86/kvm-run';

const log = loggerFor('vcpu');

export interface VcpuThread {
  run: ArrayBuffer;
  tid: number;
  resume(immediateExit?: boolean): void;
  kick(): void;
  stop(): void;
}

/** What the VM needs to hear about; everything else is handled here. */
export interface VcpuHost {
  pio: IoBus;
  mmio: IoBus;
  /**
   * Any other exit (shutdown, internal error, KVM failure): the VM decides. Returns true
   * when it dealt with it and the vCPU should go on (e.g. an instruction it completed).
   */
  onFatalExit(vcpu: Vcpu, reason: number): boolean;
  /** The vCPU parked after a kick. */
  onParked(vcpu: Vcpu): void;
}

export class Vcpu {
  private thread?: VcpuThread;
  /** The vCPU's kvm_run page (exit details), valid once the thread started. */
  runView!: DataView;
  private runBytes!: Uint8Array;
  /** True while the thread waits in userspace for us (not in KVM_RUN, not mid-exit). */
  parked = true;
  private pauseRequested = false;
  exits = 0;

  constructor(
    readonly id: number,
    readonly fd: number,
    private readonly mmapSize: number,
    private readonly host: VcpuHost,
  ) {}

  startThread(): void {
    this.thread = native.vcpuThreadStart(this.fd, this.mmapSize, (reason: number) => this.onExit(reason));
    this.runView = new DataView(this.thread.run);
    this.runBytes = new Uint8Array(this.thread.run);
    // QEMU's name for the thread (as with -name debug-threads=on): top, taskset and cgroup
    // tooling can tell the vCPUs from the emulator's threads.
    try { fs.writeFileSync(`/proc/self/task/${this.thread.tid}/comm`, `CPU ${this.id}/KVM`); } catch { /* cosmetic */ }
  }

  /** Linux tid of the vCPU's thread, once started. */
  get tid(): number | undefined {
    return this.thread?.tid;
  }

  /** Enter (or re-enter) the guest. */
  resume(): void {
    if (!this.thread) throw new Error(`vCPU ${this.id}: thread not started`);
    this.pauseRequested = false;
    this.parked = false;
    this.thread.resume();
  }

  /** Ask the vCPU to park; `host.onParked` is called once it has. */
  requestPause(): void {
    if (this.parked || !this.thread) {
      this.host.onParked(this);
      return;
    }
    this.pauseRequested = true;
    this.thread.kick();
  }

  stopThread(): void {
    this.thread?.stop();
    this.thread = undefined;
    this.parked = true;
  }

  private onExit(reason: number): void {
    this.exits++;
    try {
      if (reason === EXIT_KICKED) {
        this.park();
        return;
      }
      if (reason === EXIT.IO) this.handleIo();
      else if (reason === EXIT.MMIO) this.handleMmio();
      else if (reason === EXIT.IRQ_WINDOW_OPEN || reason === EXIT.INTR || reason === EXIT.HLT) {
        // nothing to do: re-enter
      } else {
        this.parked = true;
        if (!this.host.onFatalExit(this, reason)) return;
        this.parked = false;
      }
    } catch (err) {
      log.error(`vCPU ${this.id}: handling ${exitName(reason)} failed: ${(err as Error).message}`);
    }
    if (this.pauseRequested) {
      // Re-enter once with immediate_exit so KVM completes this exit's I/O, then park.
      this.thread?.resume(true);
      return;
    }
    this.thread?.resume();
  }

  private park(): void {
    this.parked = true;
    this.pauseRequested = false;
    this.host.onParked(this);
  }

  private handleIo(): void {
    const v = this.runView;
    const dir = KVM_RUN.num(v, 0, 'io_direction');
    const size = KVM_RUN.num(v, 0, 'io_size');
    const port = KVM_RUN.num(v, 0, 'io_port');
    const count = KVM_RUN.num(v, 0, 'io_count');
    const dataOffset = KVM_RUN.num(v, 0, 'io_data_offset');
    if (dataOffset + size * count > this.runBytes.length) return;
    for (let i = 0; i < count; i++) {
      const at = dataOffset + i * size;
      if (dir === KVM_EXIT_IO_IN) {
        const value = this.host.pio.read(port, size);
        if (size === 1) v.setUint8(at, value);
        else if (size === 2) v.setUint16(at, value, true);
        else v.setUint32(at, value >>> 0, true);
      } else {
        const value = size === 1 ? v.getUint8(at) : size === 2 ? v.getUint16(at, true) : v.getUint32(at, true);
        this.host.pio.write(port, size, value);
      }
    }
  }

  private handleMmio(): void {
    const v = this.runView;
    const addr = KVM_RUN.num(v, 0, 'mmio_phys_addr');
    const len = KVM_RUN.num(v, 0, 'mmio_len');
    const isWrite = KVM_RUN.num(v, 0, 'mmio_is_write');
    if (len < 1 || len > 8) return;
    if (isWrite) {
      const value = len === 8 ? Number(v.getBigUint64(KVM_RUN_MMIO_DATA, true) & 0xffffffffn) : readLe(v, KVM_RUN_MMIO_DATA, len);
      this.host.mmio.write(addr, Math.min(len, 4), value);
      if (len === 8) this.host.mmio.write(addr + 4, 4, Number(v.getBigUint64(KVM_RUN_MMIO_DATA, true) >> 32n));
    } else {
      const lo = this.host.mmio.read(addr, Math.min(len, 4));
      writeLe(v, KVM_RUN_MMIO_DATA, Math.min(len, 4), lo);
      if (len === 8) writeLe(v, KVM_RUN_MMIO_DATA + 4, 4, this.host.mmio.read(addr + 4, 4));
    }
  }
}

function readLe(v: DataView, at: number, len: number): number {
  let value = 0;
  for (let i = len - 1; i >= 0; i--) value = value * 256 + v.getUint8(at + i);
  return value;
}

function writeLe(v: DataView, at: number, len: number, value: number): void {
  for (let i = 0; i < len; i++) v.setUint8(at + i, Math.floor(value / 2 ** (8 * i)) & 0xff);
}

/** A vCPU's architectural state, as named raw kernel structs plus MSR values. */
export interface VcpuState {
  blobs: { [name: string]: Buffer };
  msrs: [number, string][];
}

/**
 * Restore order (what KVM needs): mp_state first (it decides whether the vCPU runs), then
 * regs and sregs, FPU/XSAVE/XCRs, debug regs, the LAPIC, MSRs (TSC after sregs so the
 * guest's TSC offset lands last), and the pending events last, as they refer to all above.
 */
export const VCPU_STATE_ORDER = ['mpState', 'regs', 'sregs', 'fpu', 'xsave', 'xcrs', 'debugRegs', 'lapic', 'vcpuEvents'] as const;
type StateName = (typeof VCPU_STATE_ORDER)[number];

const GETTERS: Record<StateName, (fd: number) => Buffer> = {
  mpState: (fd) => native.kvmGetMpState(fd), regs: (fd) => native.kvmGetRegs(fd), sregs: (fd) => native.kvmGetSregs(fd),
  fpu: (fd) => native.kvmGetFpu(fd), xsave: (fd) => native.kvmGetXsave(fd), xcrs: (fd) => native.kvmGetXcrs(fd),
  debugRegs: (fd) => native.kvmGetDebugRegs(fd), lapic: (fd) => native.kvmGetLapic(fd), vcpuEvents: (fd) => native.kvmGetVcpuEvents(fd),
};
const SETTERS: Record<StateName, (fd: number, b: Buffer) => void> = {
  mpState: (fd, b) => native.kvmSetMpState(fd, b), regs: (fd, b) => native.kvmSetRegs(fd, b), sregs: (fd, b) => native.kvmSetSregs(fd, b),
  fpu: (fd, b) => native.kvmSetFpu(fd, b), xsave: (fd, b) => native.kvmSetXsave(fd, b), xcrs: (fd, b) => native.kvmSetXcrs(fd, b),
  debugRegs: (fd, b) => native.kvmSetDebugRegs(fd, b), lapic: (fd, b) => native.kvmSetLapic(fd, b), vcpuEvents: (fd, b) => native.kvmSetVcpuEvents(fd, b),
};

export function saveVcpuState(fd: number, msrIndices: readonly number[]): VcpuState {
  const blobs: { [name: string]: Buffer } = {};
  for (const name of VCPU_STATE_ORDER) blobs[name] = GETTERS[name](fd);
  const values = native.kvmGetMsrs(fd, [...msrIndices]);
  return { blobs, msrs: msrIndices.map((idx, i) => [idx, values[i].toString()]) };
}

export function restoreVcpuState(fd: number, state: VcpuState): void {
  for (const name of VCPU_STATE_ORDER) {
    if (name === 'vcpuEvents') continue;
    const b = state.blobs[name];
    if (b) SETTERS[name](fd, b);
  }
  native.kvmSetMsrs(fd, state.msrs.map(([idx, v]) => [idx, BigInt(v)] as [number, bigint]));
  if (state.blobs.vcpuEvents) SETTERS.vcpuEvents(fd, state.blobs.vcpuEvents);
}
