/**
 * Test support for the KVM native tests: a one-vCPU VM whose RAM (a memfd mapped at guest
 * physical 0) holds a few hand-assembled real-mode instructions, and a queue of vCPU exits.
 */
import * as fs from 'fs';
import {
  KVM_REGS,
  KVM_SEGMENT,
  KVM_SREGS,
  KvmNative,
  MappedMemory,
  VcpuThread,
} from '../../src/native/kvm';

// eslint-disable-next-line @typescript-eslint/no-require-imports
export const native = require('../../native/build/Release/baton_native.node') as KvmNative;

/** Where the guest's code is loaded and where it starts (CS base 0, IP here). */
export const CODE_ADDRESS = 0x1000;
/** Where KVM may put its real-mode TSS (three pages below 4 GiB, outside our RAM). */
const TSS_ADDRESS = 0xfffbd000;

export interface TinyVm {
  kvmFd: number;
  vmFd: number;
  vcpuFd: number;
  memFd: number;
  memory: MappedMemory;
  ram: Uint8Array;
  mmapSize: number;
  /** Close the vCPU fd early (close() then skips it). */
  closeVcpuFd(): void;
  close(): void;
}

export interface TinyVmOptions {
  /** Guest code, 16-bit real mode, loaded at CODE_ADDRESS. */
  code: number[];
  ramBytes?: number;
  slotFlags?: number;
  /** Create the in-kernel irqchip and PIT (needed for LAPIC/irqchip/PIT state). */
  irqchip?: boolean;
}

/** true when /dev/kvm can be opened; tests print why they skip otherwise. */
/**
 * A test that needs /dev/kvm: where it is missing the test prints why and returns (a
 * skipped test would prove nothing and say nothing).
 */
export function itKvm(name: string, fn: () => unknown, timeout?: number): void {
  it(name, async () => {
    if (!kvmAvailable()) {
      console.warn(`${name}: skipped, /dev/kvm is not available to this user`);
      return;
    }
    await fn();
  }, timeout);
}

export function kvmAvailable(): boolean {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

export function createTinyVm(options: TinyVmOptions): TinyVm {
  const ramBytes = options.ramBytes ?? 0x10000;
  const fds: number[] = [];
  let memory: MappedMemory | undefined;
  try {
    const kvmFd = native.kvmOpen();
    fds.push(kvmFd);
    const vmFd = native.kvmCreateVm(kvmFd);
    fds.push(vmFd);
    native.kvmSetTssAddr(vmFd, TSS_ADDRESS);
    if (options.irqchip) {
      native.kvmCreateIrqchip(vmFd);
      native.kvmCreatePit2(vmFd, 0);
    }
    const memFd = native.memfdCreate('baton-test-ram');
    fds.push(memFd);
    native.ftruncate(memFd, ramBytes);
    memory = native.mmapShared(memFd, ramBytes);
    const ram = new Uint8Array(memory.buffer);
    ram.set(options.code, CODE_ADDRESS);
    native.kvmSetUserMemoryRegion(vmFd, {
      slot: 0,
      flags: options.slotFlags ?? 0,
      guestPhysAddr: 0,
      memorySize: ramBytes,
      userspaceAddr: memory.address,
    });
    const vcpuFd = native.kvmCreateVcpu(vmFd, 0);
    fds.push(vcpuFd);
    startInRealModeAt(vcpuFd, CODE_ADDRESS);
    const mapped = memory;
    return {
      kvmFd,
      vmFd,
      vcpuFd,
      memFd,
      memory: mapped,
      ram,
      mmapSize: native.kvmGetVcpuMmapSize(kvmFd),
      closeVcpuFd() {
        fs.closeSync(vcpuFd);
        fds.splice(fds.indexOf(vcpuFd), 1);
      },
      close() {
        native.munmap(mapped.address, ramBytes);
        for (const fd of fds.reverse()) fs.closeSync(fd);
      },
    };
  } catch (err) {
    if (memory) native.munmap(memory.address, ramBytes);
    for (const fd of fds.reverse()) fs.closeSync(fd);
    throw err;
  }
}

/** Reset state has CS base 0xffff0000; put CS at 0 so IP addresses our RAM directly. */
function startInRealModeAt(vcpuFd: number, ip: number): void {
  const sregs = native.kvmGetSregs(vcpuFd);
  sregs.writeBigUInt64LE(0n, KVM_SREGS.cs + KVM_SEGMENT.base);
  sregs.writeUInt16LE(0, KVM_SREGS.cs + KVM_SEGMENT.selector);
  native.kvmSetSregs(vcpuFd, sregs);
  const regs = native.kvmGetRegs(vcpuFd);
  regs.fill(0);
  regs.writeBigUInt64LE(BigInt(ip), KVM_REGS.rip);
  regs.writeBigUInt64LE(2n, KVM_REGS.rflags); // bit 1 is always set
  native.kvmSetRegs(vcpuFd, regs);
}

/** Collects a vCPU thread's exits so a test can await them in order. */
export class ExitQueue {
  private readonly reasons: number[] = [];
  private waiter: ((reason: number) => void) | undefined;

  readonly onExit = (reason: number): void => {
    if (this.waiter) {
      const wake = this.waiter;
      this.waiter = undefined;
      wake(reason);
    } else {
      this.reasons.push(reason);
    }
  };

  /** The next exit reason, or a rejection after timeoutMs. */
  next(timeoutMs = 20000): Promise<number> {
    const queued = this.reasons.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`no vCPU exit within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = (reason) => {
        clearTimeout(timer);
        resolve(reason);
      };
    });
  }

  get pending(): number {
    return this.reasons.length;
  }
}

export function startVcpu(vm: TinyVm, exits: ExitQueue): VcpuThread {
  return native.vcpuThreadStart(vm.vcpuFd, vm.mmapSize, exits.onExit);
}

/**
 * Matches the TypeError the addon throws for a bad argument. (`toThrow(TypeError)` does not
 * work: the addon's TypeError comes from Node's realm, not from the jest sandbox's.)
 */
export function argError(operation: string): ReturnType<typeof expect.objectContaining> {
  return expect.objectContaining({ name: 'TypeError', code: 'ERR_INVALID_ARG', syscall: operation });
}
