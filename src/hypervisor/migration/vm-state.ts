/**
 * Whole-VM save and restore over a state stream: machine shape, in-kernel irqchips, PIT
 * and clock, every vCPU, every device (each device's state comes from the device itself),
 * and RAM — copied in chunks (zero chunks skipped) or, on a local migration with shared
 * memory, not at all (the memory fd travels instead).
 */
import { native } from '../../native';
import { trace } from '../../util/trace';
import { Vm } from '../vm';
import { VcpuState, restoreVcpuState, saveVcpuState } from '../vcpu';
import { SAVED_MSRS } from '../x86/msrs';
import { RAM_CHUNK, isZero } from './ram-precopy';
import { ByteSink, ByteSource } from './byte-channel';
import {
  HEADER_SIZE, MAX_SECTION_NAME, StreamError, TAG_END, TAG_SECTION, blob, checkCrc, decodeHeader, decodeRecord,
  encodeEnd, encodeHeader, encodeRecord, encodeSection,
} from './stream-format';

const KVM_IRQCHIP_IDS = [0, 1, 2]; // PIC master, PIC slave, IOAPIC
/** The largest non-RAM section we accept (guards against a corrupt length field). */
const MAX_SECTION_PAYLOAD = RAM_CHUNK + 64 * 1024;

export interface DeviceStateOwner {
  /** Section name, e.g. "dev/serial0". */
  readonly section: string;
  readonly version: number;
  save(): unknown;
  restore(state: unknown): void;
  /**
   * Open files that travel with the section on a channel that carries fds (a local
   * migration's TAP queues). Such a section is left out of streams without fds.
   */
  readonly fds?: { send(): number[]; receive(fds: number[]): void };
}

/** How guest RAM reaches the destination. */
export type RamTransfer =
  | 'copy' // RAM sections in the stream (save files, migrations without shared memory)
  | 'fd' // the memory fd travels over the UNIX channel: nothing copied
  | 'file'; // both sides map the same shared file: nothing copied

export interface SaveOptions {
  ram: RamTransfer;
  /** The channel carries fds (local migration): fd-carrying sections are included. */
  withFds: boolean;
  /** Netpass frames follow the stream once the destination runs (see net/netpass.ts). */
  netpass?: boolean;
  /** RAM already went out live (ram-precopy.ts): no RAM sections in the device state. */
  ramSent?: boolean;
}

export function deviceStateOwners(vm: Vm): DeviceStateOwner[] {
  return [
    { section: 'dev/serial0', version: 1, save: () => vm.serial.save(), restore: (s) => vm.serial.restore(s as never) },
    { section: 'dev/i8042', version: 1, save: () => vm.i8042.save(), restore: (s) => vm.i8042.restore(s as never) },
    { section: 'dev/acpi-pm', version: 1, save: () => vm.pm.save(), restore: (s) => vm.pm.restore(s as never) },
    ...vm.extraDeviceState,
  ];
}

const savedMsrsByVm = new WeakMap<Vm, number[]>();

/** The MSRs to save, asked of KVM once per VM (a save runs inside the migration's pause). */
function supportedSavedMsrs(vm: Vm): number[] {
  let msrs = savedMsrsByVm.get(vm);
  if (!msrs) {
    const listed = new Set(native.kvmGetMsrIndexList(vm.kvmFd));
    msrs = SAVED_MSRS.filter((m) => listed.has(m));
    savedMsrsByVm.set(vm, msrs);
  }
  return msrs;
}

/**
 * The part of the stream that can go before the pause: header, machine shape, the RAM fd
 * (local migration), and a `setup-end` marker after which the destination reports ready.
 */
export async function saveSetup(vm: Vm, sink: ByteSink, opts: SaveOptions): Promise<number> {
  await sink.write([encodeHeader()]);
  let sections = 0;
  await sink.write(encodeSection('machine', 1, encodeRecord({
    name: vm.config.name, memoryMiB: vm.config.memory.sizeMiB, vcpus: vm.config.vcpus, cpuModel: vm.config.cpuModel,
    ram: opts.ram, status: vm.statusBeforeSave ?? vm.status, netpass: !!opts.netpass,
  })));
  sections++;
  if (opts.ram === 'fd') {
    if (!sink.writeWithFds) throw new StreamError('this channel cannot carry the memory fd', 'ram-fd');
    const [head, payload, crc] = encodeSection('ram-fd', 1, encodeRecord({ fds: 1 }));
    await sink.writeWithFds(head, [vm.memFd]);
    await sink.write([payload, crc]);
    sections++;
  }
  await sink.write(encodeSection('setup-end', 1, encodeRecord({})));
  return sections + 1;
}

/**
 * KVM, vCPU and device state and the end marker, as one buffer plus the fds that travel with
 * it. A rehearsal (the VM still running) reads no vCPU and takes no fds, and is thrown away.
 */
function encodeDeviceState(vm: Vm, withFds: boolean, sectionsBefore: number, rehearsal = false): { bytes: Buffer; fds: number[]; count: number } {
  const out: Buffer[] = [];
  const fds: number[] = [];
  let count = sectionsBefore;
  const add = (name: string, version: number, payload: Buffer) => {
    out.push(...encodeSection(name, version, payload));
    count++;
  };
  const irqchips: { [k: string]: Buffer } = {};
  for (const id of KVM_IRQCHIP_IDS) irqchips[`chip${id}`] = native.kvmGetIrqchip(vm.vmFd, id);
  add('kvm/irqchip', 1, encodeRecord({}, irqchips));
  add('kvm/pit', 1, encodeRecord({}, { pit2: native.kvmGetPit2(vm.vmFd) }));
  add('kvm/clock', 1, encodeRecord({}, { clock: native.kvmGetClock(vm.vmFd) }));
  const msrs = supportedSavedMsrs(vm);
  // A running vCPU's state cannot be read (its ioctls wait for KVM_RUN to return).
  if (!rehearsal) {
    for (const vcpu of vm.vcpus) {
      const s = saveVcpuState(vcpu.fd, msrs);
      add(`cpu/${vcpu.id}`, 1, encodeRecord({ msrs: s.msrs }, s.blobs));
    }
  }
  if (!rehearsal) trace('save: vCPUs read');
  for (const dev of deviceStateOwners(vm)) {
    if (dev.fds) {
      if (!withFds) continue;
      const sent = rehearsal ? [] : dev.fds.send();
      fds.push(...sent);
      add(dev.section, dev.version, encodeRecord({ fds: sent.length, state: dev.save() }));
      continue;
    }
    add(dev.section, dev.version, encodeRecord(dev.save()));
  }
  out.push(encodeEnd(count));
  const bytes = Buffer.concat(out);
  if (!rehearsal) trace('save: device state encoded');
  return { bytes, fds, count };
}

/**
 * While the VM still runs: goes through the device-state save once and discards it, so the
 * pause does not pay for first use (V8 compiling and warming these functions).
 */
export function rehearseSave(vm: Vm, withFds: boolean): void {
  encodeDeviceState(vm, withFds, 0, true);
}

/** The rest: RAM when copied, KVM and vCPU state, devices, end marker. The VM must be paused. */
export async function saveDeviceState(vm: Vm, sink: ByteSink, opts: SaveOptions, sectionsBefore: number): Promise<{ sections: number; ramBytes: number }> {
  let sections = sectionsBefore;
  let ramBytes = 0;
  const put = async (name: string, version: number, payload: Buffer) => {
    await sink.write(encodeSection(name, version, payload));
    sections++;
  };
  if (opts.ram === 'copy' && !opts.ramSent) {
    for (const region of vm.memory.regions) {
      for (let off = 0; off < region.size; off += RAM_CHUNK) {
        const len = Math.min(RAM_CHUNK, region.size - off);
        const bytes = region.bytes.subarray(off, off + len);
        if (isZero(bytes)) continue;
        await put('ram', 1, encodeRecord({ gpa: region.gpa + off }, { data: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength) }));
        ramBytes += len;
      }
    }
  }
  // The device state goes out as one write (one sendmsg carrying every fd, in section order:
  // the reader takes fds first-in first-out), so the destination wakes once, not per section.
  const { bytes, fds, count } = encodeDeviceState(vm, opts.withFds, sections);
  sections = count;
  if (fds.length) {
    if (!sink.writeWithFds) throw new StreamError('this channel cannot carry fds', 'device state');
    await sink.writeWithFds(bytes, fds);
  } else {
    await sink.write([bytes]);
  }
  return { sections, ramBytes };
}

/** A whole save in one go (file: URIs). The VM must be paused. */
export async function saveVm(vm: Vm, sink: ByteSink, opts: SaveOptions): Promise<{ sections: number; ramBytes: number }> {
  const n = await saveSetup(vm, sink, opts);
  return saveDeviceState(vm, sink, opts, n);
}


interface Section { name: string; version: number; payload: Buffer }

async function takeFds(src: ByteSource, section: string, count: number): Promise<number[]> {
  if (!Number.isInteger(count) || count < 0 || count > 64) throw new StreamError(`implausible fd count ${count}`, section);
  if (!src.takeFds) throw new StreamError('this stream expects file descriptors, but its channel cannot carry them (local migration needs a UNIX socket)', section);
  return src.takeFds(count, section);
}

export async function readSection(src: ByteSource, after: string): Promise<Section | { end: number }> {
  const tag = (await src.read(1, `after ${after}`))[0];
  if (tag === TAG_END) return { end: (await src.read(4, 'end')).readUInt32LE(0) };
  if (tag !== TAG_SECTION) throw new StreamError(`unknown tag 0x${tag.toString(16)} (corrupt stream)`, `after ${after}`);
  const nameLen = (await src.read(2, `after ${after}`)).readUInt16LE(0);
  if (nameLen === 0 || nameLen > MAX_SECTION_NAME) throw new StreamError(`bad section name length ${nameLen}`, `after ${after}`);
  const name = (await src.read(nameLen, `after ${after}`)).toString('utf8');
  const head = await src.read(12, name);
  const version = head.readUInt32LE(0);
  const length = head.readBigUInt64LE(4);
  if (length > BigInt(MAX_SECTION_PAYLOAD)) throw new StreamError(`payload length ${length} is implausible (corrupt stream)`, name);
  const payload = await src.read(Number(length), name);
  checkCrc(name, payload, await src.read(4, name));
  return { name, version, payload };
}

/**
 * Reads a stream into a freshly created VM (same shape). Restore order: RAM, then the
 * irqchips and PIT (vCPU LAPIC state refers to them), the clock, vCPUs, devices.
 */
export interface RestoreHooks {
  /** Called at `setup-end`: RAM is attached, devices exist; the source may now pause. */
  onSetupDone?(): Promise<void>;
}

/** A `cpu/N` record (or a rehearsal's) back as the state restoreVcpuState takes. */
function vcpuStateOf(rec: ReturnType<typeof decodeRecord>): VcpuState {
  return { blobs: Object.fromEntries(rec.blobs), msrs: (rec.head as { msrs: [number, string][] }).msrs };
}

/**
 * Before the source pauses: put this VM's own (fresh) state back through the restore path,
 * so the pause does not pay for first use (V8 compiling and warming these functions, KVM's
 * first-time work on each vCPU ioctl). Devices whose state carries fds wait for theirs.
 */
function rehearseRestore(vm: Vm): void {
  for (const id of KVM_IRQCHIP_IDS) native.kvmSetIrqchip(vm.vmFd, native.kvmGetIrqchip(vm.vmFd, id));
  native.kvmSetPit2(vm.vmFd, native.kvmGetPit2(vm.vmFd));
  native.kvmSetClock(vm.vmFd, native.kvmGetClock(vm.vmFd));
  const msrs = supportedSavedMsrs(vm);
  for (const vcpu of vm.vcpus) {
    const s = saveVcpuState(vcpu.fd, msrs);
    const rec = decodeRecord('rehearsal', encodeRecord({ msrs: s.msrs }, s.blobs));
    restoreVcpuState(vcpu.fd, vcpuStateOf(rec));
  }
  for (const dev of deviceStateOwners(vm)) {
    if (!dev.fds) dev.restore(decodeRecord(dev.section, encodeRecord(dev.save())).head);
  }
}

export async function restoreVm(vm: Vm, src: ByteSource, hooks: RestoreHooks = {}): Promise<{ status: string; netpass: boolean }> {
  decodeHeader(await src.read(HEADER_SIZE, 'header'));
  // Owners are looked up per section (device_add may run until the migration starts).
  const ownerOf = (section: string) => deviceStateOwners(vm).find((d) => d.section === section);
  let count = 0;
  let last = 'header';
  let savedStatus = 'running';
  let netpass = false;
  let sawMachine = false;
  for (;;) {
    const s = await readSection(src, last);
    if ('end' in s) {
      if (s.end !== count) throw new StreamError(`end marker counts ${s.end} sections, stream had ${count}`, 'end');
      break;
    }
    count++;
    last = s.name;
    const rec = decodeRecord(s.name, s.payload);
    if (s.name !== 'machine' && !sawMachine) throw new StreamError('stream does not start with the machine section', s.name);
    if (s.version !== 1 && !ownerOf(s.name)) throw new StreamError(`section version ${s.version} is newer than this build reads (1)`, s.name);
    if (s.name === 'machine') {
      const m = rec.head as { memoryMiB: number; vcpus: number; status: string; ram: RamTransfer };
      if (m.memoryMiB !== vm.config.memory.sizeMiB) throw new StreamError(`saved VM has ${m.memoryMiB} MiB, this one ${vm.config.memory.sizeMiB} MiB`, s.name);
      if (m.vcpus !== vm.config.vcpus) throw new StreamError(`saved VM has ${m.vcpus} vCPUs, this one ${vm.config.vcpus}`, s.name);
      if (m.ram === 'file' && vm.config.memory.backing !== 'file') {
        throw new StreamError('the source shares its RAM through a file; start the destination with the same --mem-path', s.name);
      }
      savedStatus = m.status;
      netpass = (m as { netpass?: boolean }).netpass === true;
      sawMachine = true;
      // RAM that is copied or shared by path is ours to map now; an fd comes in its own section.
      if (m.ram !== 'fd' && !vm.hasMemory) vm.attachFreshMemory();
    } else if (s.name === 'ram-fd') {
      const [memFd] = await takeFds(src, s.name, 1);
      if (vm.hasMemory) {
        native.close(memFd);
        throw new StreamError('guest RAM is already attached; a RAM fd cannot replace it', s.name);
      }
      trace('restore: RAM fd received');
      vm.attachMemory(memFd);
      trace('restore: RAM attached');
    } else if (s.name === 'setup-end') {
      if (!vm.hasMemory) throw new StreamError('setup ended without guest RAM (no ram-fd section)', s.name);
      rehearseRestore(vm);
      trace('restore: rehearsed');
      await hooks.onSetupDone?.();
    } else if (!vm.hasMemory) {
      throw new StreamError('device state arrived before guest RAM', s.name);
    } else if (s.name === 'ram') {
      const { gpa } = rec.head as { gpa: number };
      const data = blob(rec, s.name, 'data');
      try { vm.memory.write(gpa, data); } catch { throw new StreamError(`chunk at 0x${Number(gpa).toString(16)} is outside guest RAM`, s.name); }
    } else if (s.name === 'kvm/irqchip') {
      trace('restore: device state arrived');
      for (const id of KVM_IRQCHIP_IDS) native.kvmSetIrqchip(vm.vmFd, blob(rec, s.name, `chip${id}`));
    } else if (s.name === 'kvm/pit') {
      native.kvmSetPit2(vm.vmFd, blob(rec, s.name, 'pit2'));
    } else if (s.name === 'kvm/clock') {
      native.kvmSetClock(vm.vmFd, blob(rec, s.name, 'clock'));
    } else if (s.name.startsWith('cpu/')) {
      trace(`restore: ${s.name}`);
      const id = Number(s.name.slice(4));
      const vcpu = vm.vcpus[id];
      if (!vcpu) throw new StreamError(`no vCPU ${id} in this VM`, s.name);
      const state = vcpuStateOf(rec);
      try { restoreVcpuState(vcpu.fd, state); } catch (err) { throw new StreamError(`KVM refused the state: ${(err as Error).message}`, s.name); }
    } else {
      trace(`restore: ${s.name}`);
      const owner = ownerOf(s.name);
      if (!owner) throw new StreamError('unknown section (this build has no such device)', s.name);
      if (s.version > owner.version) throw new StreamError(`section version ${s.version} is newer than this build reads (${owner.version})`, s.name);
      if (owner.fds) {
        const head = rec.head as { fds: number; state: unknown };
        owner.fds.receive(await takeFds(src, s.name, head.fds));
        owner.restore(head.state);
      } else {
        owner.restore(rec.head);
      }
    }
  }
  return { status: savedStatus, netpass };
}
