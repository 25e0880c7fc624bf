/**
 * vCPU threads against the real /dev/kvm: exits handed to the JS loop, resume, kick, stop.
 * Guest code is 16-bit real mode, which this host's KVM emulates (~1000x slower than native).
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import {
  KVM_EXIT_HLT,
  KVM_EXIT_IO,
  KVM_EXIT_IO_OUT,
  KVM_RUN,
  KVM_RUN_IO,
  VCPU_EXIT_KICKED,
  VcpuThread,
  vcpuRunErrno,
} from '../../src/native/kvm';
import { ExitQueue, argError, TinyVm, createTinyVm, itKvm, native, startVcpu } from './realModeGuest';


interface IoExit {
  direction: number;
  size: number;
  port: number;
  count: number;
  data: number;
}

function readIoExit(run: ArrayBuffer): IoExit {
  const view = new DataView(run);
  const dataOffset = Number(view.getBigUint64(KVM_RUN_IO.dataOffset, true));
  return {
    direction: view.getUint8(KVM_RUN_IO.direction),
    size: view.getUint8(KVM_RUN_IO.size),
    port: view.getUint16(KVM_RUN_IO.port, true),
    count: view.getUint32(KVM_RUN_IO.count, true),
    data: view.getUint8(dataOffset),
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

describe('vcpuThreadStart', () => {
  let vm: TinyVm | undefined;
  let thread: VcpuThread | undefined;

  afterEach(() => {
    thread?.stop();
    thread = undefined;
    vm?.close();
    vm = undefined;
  });

  itKvm('hands port I/O and HLT exits to the JS loop, which keeps ticking while the guest spins', async () => {
    const flagAddress = 0x2000;
    vm = createTinyVm({
      code: [
        0xba, 0xf8, 0x03, //       mov dx, 0x3f8
        0xb0, 0x41, //             mov al, 'A'
        0xee, //                   out dx, al
        0x80, 0x3e, 0x00, 0x20, 0x00, // spin: cmp byte [0x2000], 0
        0x74, 0xf9, //             je spin
        0xb0, 0x42, //             mov al, 'B'
        0xee, //                   out dx, al
        0xf4, //                   hlt
      ],
    });
    const exits = new ExitQueue();
    thread = startVcpu(vm, exits);
    expect(thread.run.byteLength).toBe(vm.mmapSize);
    expect(fs.existsSync(`/proc/self/task/${thread.tid}`)).toBe(true);

    thread.resume();
    expect(await exits.next()).toBe(KVM_EXIT_IO);
    expect(new DataView(thread.run).getUint32(KVM_RUN.exitReason, true)).toBe(KVM_EXIT_IO);
    expect(readIoExit(thread.run)).toEqual({ direction: KVM_EXIT_IO_OUT, size: 1, port: 0x3f8, count: 1, data: 0x41 });

    // The guest now spins in KVM_RUN until it sees the flag; the loop must keep running meanwhile.
    thread.resume();
    let ticks = 0;
    const ram = vm.ram;
    const interval = setInterval(() => {
      ticks++;
      if (ticks === 5) ram[flagAddress] = 1;
    }, 10);
    try {
      expect(await exits.next()).toBe(KVM_EXIT_IO);
      expect(ticks).toBeGreaterThanOrEqual(5);
      expect(readIoExit(thread.run).data).toBe(0x42);
      thread.resume();
      expect(await exits.next()).toBe(KVM_EXIT_HLT);
    } finally {
      clearInterval(interval);
    }
    expect(exits.pending).toBe(0);
  });

  itKvm('shares guest RAM both ways: the guest reads what JS wrote, JS sees what the guest wrote', async () => {
    vm = createTinyVm({
      code: [
        0xa0, 0x00, 0x20, //                   mov al, [0x2000]
        0xe6, 0x10, //                         out 0x10, al
        0xc6, 0x06, 0x01, 0x20, 0x99, //       mov byte [0x2001], 0x99
        0xf4, //                               hlt
      ],
    });
    vm.ram[0x2000] = 0x5a;
    const exits = new ExitQueue();
    thread = startVcpu(vm, exits);
    thread.resume();
    expect(await exits.next()).toBe(KVM_EXIT_IO);
    expect(readIoExit(thread.run)).toMatchObject({ port: 0x10, data: 0x5a });
    expect(vm.ram[0x2001]).toBe(0);
    thread.resume();
    expect(await exits.next()).toBe(KVM_EXIT_HLT);
    expect(vm.ram[0x2001]).toBe(0x99);
  });

  itKvm('kick() gets a spinning guest out of KVM_RUN promptly, and resume() runs it again', async () => {
    vm = createTinyVm({ code: [0xeb, 0xfe] }); // jmp $
    const exits = new ExitQueue();
    thread = startVcpu(vm, exits);

    // Parked (never resumed): a kick has nothing to interrupt and reports nothing.
    thread.kick();
    await sleep(50);
    expect(exits.pending).toBe(0);

    const kickMs: number[] = [];
    for (let round = 0; round < 3; round++) {
      thread.resume();
      await sleep(150);
      // Still running: immediate_exit from the previous kick was cleared by resume().
      expect(exits.pending).toBe(0);
      const start = process.hrtime.bigint();
      thread.kick();
      expect(await exits.next(5000)).toBe(VCPU_EXIT_KICKED);
      kickMs.push(Number(process.hrtime.bigint() - start) / 1e6);
    }
    console.log(`kick -> onExit(-1): ${kickMs.map((ms) => ms.toFixed(2)).join(', ')} ms`);
    for (const ms of kickMs) expect(ms).toBeLessThan(1000);
  });

  itKvm('stop() ends a running thread promptly and delivers no exit afterwards', async () => {
    vm = createTinyVm({ code: [0xeb, 0xfe] });
    const exits = new ExitQueue();
    const running = startVcpu(vm, exits);
    const tid = running.tid;
    running.resume();
    await sleep(100);
    const start = Date.now();
    running.stop();
    running.stop(); // idempotent
    expect(Date.now() - start).toBeLessThan(1000);
    expect(fs.existsSync(`/proc/self/task/${tid}`)).toBe(false);
    await sleep(50);
    expect(exits.pending).toBe(0);
    expect(() => running.resume()).toThrow(expect.objectContaining({ code: 'ESRCH', syscall: 'vcpuThread.resume' }));
    running.kick(); // no-op once stopped
  });

  itKvm('resume() while the vCPU runs is refused', async () => {
    vm = createTinyVm({ code: [0xeb, 0xfe] });
    const exits = new ExitQueue();
    thread = startVcpu(vm, exits);
    thread.resume();
    expect(() => thread!.resume()).toThrow(argError('vcpuThread.resume'));
    thread.kick();
    expect(await exits.next()).toBe(VCPU_EXIT_KICKED);
  });

  itKvm('reports a failing KVM_RUN as -2 - errno', async () => {
    vm = createTinyVm({ code: [0xf4] });
    const exits = new ExitQueue();
    thread = startVcpu(vm, exits);
    // The thread keeps its own mapping of kvm_run; KVM_RUN on the closed fd number fails.
    vm.closeVcpuFd();
    thread.resume();
    const reason = await exits.next();
    expect(reason).toBeLessThanOrEqual(-2);
    expect(vcpuRunErrno(reason)).toBeGreaterThan(0);
  });

  it('rejects bad arguments without crashing', () => {
    const onExit = (): void => undefined;
    expect(() => native.vcpuThreadStart(-1, 12288, onExit)).toThrow(argError('vcpuThreadStart'));
    expect(() => native.vcpuThreadStart(0, 12288, 'x' as never)).toThrow(argError('vcpuThreadStart'));
    expect(() => native.vcpuThreadStart(0, 12, onExit)).toThrow(argError('vcpuThreadStart'));
    // Not a vCPU: stdin/stdout, and an fd number that is not open.
    expect(() => native.vcpuThreadStart(1, 12288, onExit)).toThrow(/not a KVM vCPU/);
    expect(() => native.vcpuThreadStart(999999, 12288, onExit)).toThrow(
      expect.objectContaining({ code: 'EBADF', syscall: 'vcpuThreadStart' }),
    );
  });

  /** A node child that runs `guest` (real-mode bytes) on a vCPU thread, then `then` (JS). */
  function runChild(guest: number[], onExit: string, then: string): ReturnType<typeof spawnSync> {
    const script = `
      const n = require(${JSON.stringify(path.resolve(__dirname, '../../native/build/Release/baton_native.node'))});
      const kvm = n.kvmOpen(); const vm = n.kvmCreateVm(kvm); n.kvmSetTssAddr(vm, 0xfffbd000);
      const mem = n.memfdCreate('ram'); n.ftruncate(mem, 0x10000);
      const m = n.mmapShared(mem, 0x10000); new Uint8Array(m.buffer).set(${JSON.stringify(guest)}, 0x1000);
      n.kvmSetUserMemoryRegion(vm, { slot: 0, guestPhysAddr: 0, memorySize: 0x10000, userspaceAddr: m.address });
      const cpu = n.kvmCreateVcpu(vm, 0);
      const s = n.kvmGetSregs(cpu); s.writeBigUInt64LE(0n, 0); s.writeUInt16LE(0, 12); n.kvmSetSregs(cpu, s);
      const r = n.kvmGetRegs(cpu); r.fill(0); r.writeBigUInt64LE(0x1000n, 128); r.writeBigUInt64LE(2n, 136); n.kvmSetRegs(cpu, r);
      const t = n.vcpuThreadStart(cpu, n.kvmGetVcpuMmapSize(kvm), ${onExit});
      t.resume();
      ${then}
    `;
    return spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20000 });
  }

  itKvm('lets the process exit when the JS side exits with a vCPU still running', () => {
    // process.exit() with a spinning vCPU: env teardown must stop and join the thread.
    const child = runChild([0xeb, 0xfe], '() => {}', "setTimeout(() => { console.log('exiting'); process.exit(0); }, 200);");
    expect(child.stderr).toBe('');
    expect(child.stdout).toBe('exiting\n');
    expect(child.status).toBe(0);
  });

  itKvm('an exception thrown by onExit is an ordinary uncaught exception', () => {
    const child = runChild([0xf4], "(reason) => { throw new Error('onExit failed on ' + reason); }", '');
    expect(child.status).toBe(1);
    expect(child.stderr).toContain('onExit failed on 5');
  });
});
