/**
 * The instruction completer against the real /dev/kvm: tiny long-mode guests run the
 * instructions this host's emulator rejects at ring 0; the completer finishes them, and
 * the tests check RIP, flags, registers, memory, the exception frames the guest's IDT
 * handlers see, and the cases that must not be completed (faults owed instead, or refusal).
 */
import { InstructionCompleter, installInstructionCompleter } from '../../src/hypervisor/x86/insn-completer';
import { getReg, getSreg } from '../../src/hypervisor/x86/kvm-structs';
import { CR0, CR4, GuestEvent, LAYOUT, LongModeGuest, LongModeGuestOptions, PORT_MARK, PORT_VECTOR, SELECTOR, kvmAvailable, native } from './longModeGuest';
import { itKvm } from '../native/realModeGuest';

const haveKvm = kvmAvailable();

const HLT = 0xf4;
const RFLAGS_CF = 1n << 0n;
const RFLAGS_ZF = 1n << 6n;
const RFLAGS_AC = 1n << 18n;
/** mov al, value; out PORT_MARK, al */
const mark = (value: number) => [0xb0, value, 0xe6, PORT_MARK];
const le32 = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
const le64 = (v: bigint) => Array.from({ length: 8 }, (_, i) => Number((v >> BigInt(8 * i)) & 0xffn));
/** mov ebx, imm32 */
const movEbx = (v: number) => [0xbb, ...le32(v)];
/** A RIP-relative disp32 for an instruction ending at `end` (offset in code) that targets `target`. */
const ripDisp = (end: number, target: number) => le32(target - (LAYOUT.code + end));

let guest: LongModeGuest | undefined;
afterEach(() => {
  guest?.close();
  guest = undefined;
});

function start(options: LongModeGuestOptions, completerOptions = {}): { g: LongModeGuest; completer: InstructionCompleter } {
  guest = new LongModeGuest(options);
  return { g: guest, completer: new InstructionCompleter(guest.memory, completerOptions) };
}

function vectorEvent(events: GuestEvent[]): Extract<GuestEvent, { kind: 'out' }> {
  const e = events.find((x) => x.kind === 'out' && x.port === PORT_VECTOR);
  if (!e || e.kind !== 'out') throw new Error(`no exception handler ran; events: ${JSON.stringify(events, (_k, v) => typeof v === 'bigint' ? v.toString(16) : v)}`);
  return e;
}

describe('int3', () => {
  itKvm('advances RIP by one and delivers #BP: the handler sees the next RIP and iretq returns there', async () => {
    const { g, completer } = start({ code: [0xcc, ...mark(0x42), HLT] });
    const events = await g.run(completer);
    expect(events.map((e) => e.kind === 'out' ? `${e.port}:${e.value}` : e.kind)).toEqual([`${PORT_VECTOR}:3`, `${PORT_MARK}:66`, 'hlt']);
    const bp = vectorEvent(events);
    const frame = g.frameAt(bp.rsp, 3);
    expect(frame.rip).toBe(BigInt(LAYOUT.code + 1));
    expect(frame.cs).toBe(BigInt(SELECTOR.code0));
    expect(frame.rsp).toBe(BigInt(LAYOUT.stackTop));
    expect(completer.countsObject()).toEqual({ int3: 1 });
  });

  itKvm('with an IDT too short for #BP the guest triple-faults (a shutdown exit), it does not hang', async () => {
    const { g, completer } = start({ code: [0xcc, HLT], idtLimit: 0x0f });
    const events = await g.run(completer);
    expect(events.at(-1)?.kind).toBe('shutdown');
  });

  itKvm('is refused while RFLAGS.TF is set (a #DB would be owed after it)', async () => {
    const { g, completer } = start({ code: [0xcc, HLT], rflags: 0x102 });
    const events = await g.run(completer);
    expect(events).toEqual([expect.objectContaining({ kind: 'declined', rip: '0x10000', bytes: expect.stringMatching(/^cc f4/) })]);
    expect((events[0] as { reason: string }).reason).toMatch(/TF/);
  });
});

describe('clac / stac', () => {
  itKvm('set and clear RFLAGS.AC at CPL 0 and advance RIP by three', async () => {
    const { g, completer } = start({ code: [0x0f, 0x01, 0xcb, ...mark(1), 0x0f, 0x01, 0xca, ...mark(2), HLT] });
    const events = await g.run(completer);
    const outs = events.filter((e): e is Extract<GuestEvent, { kind: 'out' }> => e.kind === 'out');
    expect(outs.map((e) => [e.value, (e.rflags & RFLAGS_AC) !== 0n])).toEqual([[1, true], [2, false]]);
    expect(events.at(-1)?.kind).toBe('hlt');
    expect(completer.countsObject()).toEqual({ clac: 1, stac: 1 });
  });

  itKvm('at CPL 3 are not completed: #UD is delivered with RIP on the instruction', async () => {
    const { g, completer } = start({ startInUser: true, userCode: [0x0f, 0x01, 0xca, HLT] });
    // Ring 3 runs natively on this host (the CPU raises #UD itself), so hand the completer
    // the CPL-3 state directly, as if the emulator had rejected it.
    expect(completer.complete({ id: 0, fd: g.vcpuFd })).toBe(true);
    expect(completer.countsObject()).toEqual({ 'clac #UD': 1 });
    const events = await g.run(completer);
    const ud = vectorEvent(events);
    expect(ud.value).toBe(6);
    const frame = g.frameAt(ud.rsp, 6);
    expect(frame.rip).toBe(BigInt(LAYOUT.userCode));
    expect(frame.cs).toBe(BigInt(SELECTOR.code3));
  });

  itKvm('with a LOCK prefix raise #UD', async () => {
    const { g, completer } = start({ code: [0xf0, 0x0f, 0x01, 0xca, HLT] });
    const events = await g.run(completer);
    expect(vectorEvent(events).value).toBe(6);
    expect(g.frameAt(vectorEvent(events).rsp, 6).rip).toBe(BigInt(LAYOUT.code));
    expect(completer.countsObject()).toEqual({ 'clac #UD': 1 });
  });
});

describe('popcnt', () => {
  itKvm('register forms: 32-bit zero-extends, 16-bit merges, REX registers, ZF set and CF cleared', async () => {
    const code = [
      0x48, 0xb8, ...le64(-1n & 0xffff_ffff_ffff_ffffn), // mov rax, -1
      0x48, 0xbb, ...le64(0xf0f0_0000_0000_0001n), //          mov rbx, 0xf0f0000000000001
      0xf3, 0x0f, 0xb8, 0xc3, //                               popcnt eax, ebx
      0x48, 0xb9, ...le64(0xffff_ffff_ffff_ffffn), //          mov rcx, -1
      0x66, 0xf3, 0x0f, 0xb8, 0xcb, //                         popcnt cx, bx
      0xf3, 0x4c, 0x0f, 0xb8, 0xcb, //                         popcnt r9, rbx
      0x4d, 0x31, 0xd2, //                                     xor r10, r10
      0xf9, //                                                 stc
      0xf3, 0x4d, 0x0f, 0xb8, 0xda, //                         popcnt r11, r10
      HLT,
    ];
    const { g, completer } = start({ code });
    expect((await g.run(completer)).at(-1)?.kind).toBe('hlt');
    const regs = native.kvmGetRegs(g.vcpuFd);
    expect(getReg(regs, 'rax')).toBe(1n);
    expect(getReg(regs, 'rcx')).toBe(0xffff_ffff_ffff_0001n);
    expect(getReg(regs, 'r9')).toBe(9n);
    expect(getReg(regs, 'r11')).toBe(0n);
    const rflags = getReg(regs, 'rflags');
    expect(rflags & RFLAGS_ZF).toBe(RFLAGS_ZF);
    expect(rflags & RFLAGS_CF).toBe(0n);
    expect(completer.countsObject()).toEqual({ popcnt: 4 });
  });

  itKvm('memory forms: SIB with index and disp8, RIP-relative', async () => {
    const riprelAt = 5 + 5 + 6; // after mov ebx, mov esi, popcnt [sib]
    const code = [
      ...movEbx(LAYOUT.scratch), //                 mov ebx, scratch
      0xbe, ...le32(2), //                          mov esi, 2
      0xf3, 0x0f, 0xb8, 0x4c, 0xb3, 0x08, //        popcnt ecx, [rbx+rsi*4+8]
      0xf3, 0x48, 0x0f, 0xb8, 0x15, ...ripDisp(riprelAt + 9, LAYOUT.scratch + 32), // popcnt rdx, [rip+disp32]
      HLT,
    ];
    const { g, completer } = start({ code });
    g.memory.view(LAYOUT.scratch + 16, 4).setUint32(0, 0x0000_100f, true);
    g.memory.view(LAYOUT.scratch + 32, 8).setBigUint64(0, 0xffff_ffff_ffff_fffen, true);
    expect((await g.run(completer)).at(-1)?.kind).toBe('hlt');
    const regs = native.kvmGetRegs(g.vcpuFd);
    expect(getReg(regs, 'rcx')).toBe(5n);
    expect(getReg(regs, 'rdx')).toBe(63n);
  });

  itKvm('a memory operand on an unmapped page delivers #PF with CR2 and a not-present read error code', async () => {
    const { g, completer } = start({ code: [...movEbx(LAYOUT.unmapped + 8), 0xf3, 0x0f, 0xb8, 0x03, HLT] });
    const events = await g.run(completer);
    const pf = vectorEvent(events);
    expect(pf.value).toBe(14);
    const frame = g.frameAt(pf.rsp, 14);
    expect(frame.errorCode).toBe(0n);
    expect(frame.rip).toBe(BigInt(LAYOUT.code + 5));
    expect(getSreg(native.kvmGetSregs(g.vcpuFd), 'cr2')).toBe(BigInt(LAYOUT.unmapped + 8));
    expect(completer.countsObject()).toEqual({ 'popcnt #PF': 1 });
  });
});

describe('ldmxcsr / stmxcsr', () => {
  itKvm('load MXCSR from memory and store it back', async () => {
    const code = [
      0x0f, 0xae, 0x15, ...ripDisp(7, LAYOUT.scratch), // ldmxcsr [rip+disp32]
      ...movEbx(LAYOUT.scratch + 8), //                    mov ebx, scratch+8
      0x0f, 0xae, 0x1b, //                                 stmxcsr [rbx]
      HLT,
    ];
    const { g, completer } = start({ code });
    g.memory.view(LAYOUT.scratch, 4).setUint32(0, 0x7f80, true);
    expect((await g.run(completer)).at(-1)?.kind).toBe('hlt');
    expect(g.memory.view(LAYOUT.scratch + 8, 4).getUint32(0, true)).toBe(0x7f80);
    expect(native.kvmGetXsave(g.vcpuFd).readUInt32LE(24)).toBe(0x7f80);
    expect(completer.countsObject()).toEqual({ ldmxcsr: 1, stmxcsr: 1 });
  });

  itKvm('ldmxcsr [rsp+4] (as Linux uses it) and reserved bits: #GP(0), MXCSR unchanged', async () => {
    const code = [0x0f, 0xae, 0x54, 0x24, 0x04, HLT]; // ldmxcsr [rsp+4]
    const { g, completer } = start({ code });
    g.memory.view(LAYOUT.stackTop + 4, 4).setUint32(0, 0x1_0000, true);
    const events = await g.run(completer);
    const gp = vectorEvent(events);
    expect(gp.value).toBe(13);
    expect(g.frameAt(gp.rsp, 13)).toMatchObject({ errorCode: 0n, rip: BigInt(LAYOUT.code) });
    expect(native.kvmGetXsave(g.vcpuFd).readUInt32LE(24)).toBe(0x1f80);
  });

  itKvm('stmxcsr to a read-only page delivers #PF with a present+write error code and leaves it unchanged', async () => {
    const { g, completer } = start({ code: [...movEbx(LAYOUT.readOnly), 0x0f, 0xae, 0x1b, HLT] });
    g.memory.view(LAYOUT.readOnly, 4).setUint32(0, 0xdeadbeef, true);
    const pf = vectorEvent(await g.run(completer));
    expect(pf.value).toBe(14);
    expect(g.frameAt(pf.rsp, 14).errorCode).toBe(3n);
    expect(g.memory.view(LAYOUT.readOnly, 4).getUint32(0, true)).toBe(0xdeadbeef);
  });

  itKvm('without CR4.OSFXSR raise #UD; with CR0.TS raise #NM', async () => {
    const code = [...movEbx(LAYOUT.scratch), 0x0f, 0xae, 0x1b, HLT];
    let run = start({ code, cr4: CR4 & ~0x200 });
    expect(vectorEvent(await run.g.run(run.completer)).value).toBe(6);
    run.g.close();
    run = start({ code, cr0: (CR0 | 0x8) >>> 0 });
    expect(vectorEvent(await run.g.run(run.completer)).value).toBe(7);
    expect(run.completer.countsObject()).toEqual({ 'stmxcsr #NM': 1 });
  });
});

describe('fwait and fences', () => {
  itKvm('fwait is a no-op with CR0.TS clear; lfence/mfence/sfence complete', async () => {
    const { g, completer } = start({ code: [0x9b, 0x0f, 0xae, 0xe8, 0x0f, 0xae, 0xf0, 0x0f, 0xae, 0xf8, HLT] });
    expect((await g.run(completer)).at(-1)?.kind).toBe('hlt');
    // The host's emulator may run the fences itself; fwait it rejects.
    expect(completer.countsObject()).toMatchObject({ fwait: 1 });
  });

  itKvm('fwait with CR0.MP and CR0.TS raises #NM', async () => {
    const { g, completer } = start({ code: [0x9b, HLT], cr0: (CR0 | 0x8) >>> 0 });
    expect(vectorEvent(await g.run(completer)).value).toBe(7);
  });
});

describe('rdtscp', () => {
  itKvm('returns the guest TSC in EDX:EAX and TSC_AUX in ECX, upper halves cleared', async () => {
    const { g, completer } = start({ code: [0x48, 0xb9, ...le64(0xffff_ffff_0000_0000n), 0x0f, 0x01, 0xf9, HLT] });
    native.kvmSetMsrs(g.vcpuFd, [[0xc000_0103, 0x1234n]]);
    const before = native.kvmGetMsrs(g.vcpuFd, [0x10])[0];
    expect((await g.run(completer)).at(-1)?.kind).toBe('hlt');
    const regs = native.kvmGetRegs(g.vcpuFd);
    const tsc = (getReg(regs, 'rdx') << 32n) | getReg(regs, 'rax');
    expect(tsc).toBeGreaterThan(before);
    expect(tsc).toBeLessThanOrEqual(native.kvmGetMsrs(g.vcpuFd, [0x10])[0]);
    expect(getReg(regs, 'rcx')).toBe(0x1234n);
    expect(completer.countsObject()).toEqual({ rdtscp: 1 });
  });
});

describe('what is not completed', () => {
  itKvm('an instruction outside the set is refused with its RIP and bytes', async () => {
    // crc32 eax, ebx: the host's emulator rejects it and Baton does not complete it.
    const { g, completer } = start({ code: [0xf2, 0x0f, 0x38, 0xf1, 0xc3, HLT] });
    const events = await g.run(completer);
    expect(events).toEqual([expect.objectContaining({ kind: 'declined', rip: '0x10000', bytes: expect.stringMatching(/^f2 0f 38 f1 c3 f4/) })]);
    expect((events[0] as { reason: string }).reason).toMatch(/not in the completion set/);
    expect(completer.lastDecline).toMatchObject({ vcpu: 0, rip: '0x10000' });
  });

  itKvm('a guest spinning on a completed instruction with no progress is stopped with a reason', async () => {
    const { g, completer } = start({ code: [0x0f, 0x01, 0xca, 0xeb, 0xfb] }, { maxRepeatsWithoutProgress: 50, progressWindowMs: 60_000 });
    const t0 = performance.now();
    const events = await g.run(completer);
    const ms = performance.now() - t0;
    expect(events).toEqual([expect.objectContaining({ kind: 'declined', reason: expect.stringMatching(/no progress/) })]);
    console.log(`clac; jmp loop: ${completer.counts.get('clac')} completions in ${ms.toFixed(0)} ms (${(completer.counts.get('clac')! / ms * 1000).toFixed(0)}/s)`);
  });

  itKvm('a completion storm (registers changing) is stopped by the rate limit', async () => {
    const code = [0x48, 0xff, 0xc0, 0x0f, 0x01, 0xca, 0xeb, 0xf8]; // 1: inc rax; clac; jmp 1b
    const { g, completer } = start({ code }, { maxPerSecond: 10, stormSeconds: 1 });
    const events = await g.run(completer, { timeoutMs: 30_000 });
    expect(events).toEqual([expect.objectContaining({ kind: 'declined', reason: expect.stringMatching(/completion storm/) })]);
  });
});

describe('installInstructionCompleter', () => {
  it('sets the VM hook to the returned completer', () => {
    if (!haveKvm) return;
    const g = guest = new LongModeGuest({ code: [HLT] });
    const vm: { memory: typeof g.memory; instructionCompleter?: (v: { id: number; fd: number }) => boolean } = { memory: g.memory };
    const completer = installInstructionCompleter(vm);
    expect(typeof vm.instructionCompleter).toBe('function');
    expect(completer.countsObject()).toEqual({});
  });
});
