/**
 * A host fact that decides whether Linux userspace can run here, checked with a tiny
 * guest: on this kvm-pvm, SYSCALL from guest ring 3 loads RIP from LSTAR (and RCX,
 * R11, RFLAGS) but does not switch to ring 0, so the fetch at LSTAR faults at CPL 3 and
 * the guest gets #PF (error code 0x15: present, user, fetch; CR2 = LSTAR) instead of entering its kernel. There
 * is no exit for the hypervisor to complete it from (KVM_SET_GUEST_DEBUG fails with EIO
 * here), so Debian's /init dies at its first syscall. If this test fails, the host now
 * delivers SYSCALL properly: update shared/HOST-FACTS.md and retry the Linux boot.
 */
import { InstructionCompleter } from '../../src/hypervisor/x86/insn-completer';
import { getReg, getSreg, setSregs } from '../../src/hypervisor/x86/kvm-structs';
import { LAYOUT, LongModeGuest, PORT_MARK, PORT_VECTOR, SELECTOR, kvmAvailable, native } from './longModeGuest';

const MSR_STAR = 0xc000_0081;
const MSR_LSTAR = 0xc000_0082;
const MSR_FMASK = 0xc000_0084;
const EFER_SCE = 1n;

it('SYSCALL from guest ring 3 reaches LSTAR still at CPL 3 and faults there (host limitation)', async () => {
  if (!kvmAvailable()) return;
  const syscallHandlerMark = 0x55;
  const guest = new LongModeGuest({
    startInUser: true,
    userCode: [0x0f, 0x05, 0xf4], //                          syscall; hlt
    code: [0xb0, syscallHandlerMark, 0xe6, PORT_MARK, 0xf4], // the kernel's entry: mov al, 0x55; out; hlt
  });
  try {
    const sregs = native.kvmGetSregs(guest.vcpuFd);
    setSregs(sregs, { efer: getSreg(sregs, 'efer') | EFER_SCE });
    native.kvmSetSregs(guest.vcpuFd, sregs);
    const star = (BigInt(SELECTOR.data0) << 48n) | (BigInt(SELECTOR.code0) << 32n);
    native.kvmSetMsrs(guest.vcpuFd, [[MSR_STAR, star], [MSR_LSTAR, BigInt(LAYOUT.code)], [MSR_FMASK, 0x47700n]]);
    const events = await guest.run(new InstructionCompleter(guest.memory));
    const first = events[0];
    if (first.kind === 'out' && first.port === PORT_MARK && first.value === syscallHandlerMark) {
      throw new Error('SYSCALL now enters ring 0 on this host: update shared/HOST-FACTS.md and retry Linux userspace');
    }
    expect(first).toMatchObject({ kind: 'out', port: PORT_VECTOR, value: 14 });
    const frame = guest.frameAt((first as { rsp: bigint }).rsp, 14);
    expect(frame.rip).toBe(BigInt(LAYOUT.code));
    expect(frame.cs).toBe(BigInt(SELECTOR.code3));
    expect(getSreg(native.kvmGetSregs(guest.vcpuFd), 'cr2')).toBe(BigInt(LAYOUT.code));
    // The SYSCALL half that did happen: RCX holds the return address.
    expect(getReg(native.kvmGetRegs(guest.vcpuFd), 'rcx')).toBe(BigInt(LAYOUT.userCode + 2));
    console.log(`host fact: SYSCALL from ring 3 -> #PF at LSTAR with CS ${frame.cs.toString(16)}, error code 0x${frame.errorCode?.toString(16)}`);
  } finally {
    guest.close();
  }
});
