/**
 * Whole-VM save and restore over a state stream: machine shape, in-kernel irqchips, PIT
 * and clock, every vCPU, every device (each device's state comes from the device itself),
 * and RAM — copied in chunks (zero chunks skipped) or, on a local migration with shared
 * memory, not at all (the memory fd travels instead).
 */
import { native } from '../../native';
import { Vm } from '../vm';
import { VcpuState, restoreVcpuState, saveVcpuState } from '../vcpu';
import { SAVED_MSRS } from '../x86/msrs';
import { ByteSink, ByteSource } from './byte-channel';
import {
  HEADER_SIZE, MAX_SECTION_NAME, StreamError, TAG_END, TAG_SECTION, blob, checkCrc, decodeHeader, decodeRecord,
  encodeEnd, encodeHeader, encodeRecord, encodeSection,
} from './stream-format';

const RAM_CHUNK = 4 * 1024 * 1024;
const KVM_IRQCHIP_IDS = [0, 1, 2]; // PIC master, PIC slave, IOAPIC
/** The largest non-RAM section we accept (guards against a corrupt length field). */
const MAX_SECTION_PAYLOAD = RAM_CHUNK + 64 * 1024;

export interface DeviceStateOwner {
  /** Section name, e.g. "dev/serial0". */
  readonly section: string;
  readonly version: number;
  save(): unknown;
  restore(state: unknown): void;
}

export interface SaveOptions {
  /** Skip RAM: the destination maps the same memory (local migration with shared memory). */
  ramShared: boolean;
}

export function deviceStateOwners(vm: Vm): DeviceStateOwner[] {
  return [
    { section: 'dev/serial0', version: 1, save: () => vm.serial.save(), restore: (s) => vm.serial.restore(s as never) },
    { section: 'dev/i8042', version: 1, save: () => vm.i8042.save(), restore: (s) => vm.i8042.restore(s as never) },
    { section: 'dev/acpi-pm', version: 1, save: () => vm.pm.save(), restore: (s) => vm.pm.restore(s as never) },
    ...vm.extraDeviceState,
  ];
}

function supportedSavedMsrs(vm: Vm): number[] {
  const listed = new Set(native.kvmGetMsrIndexList(vm.kvmFd));
  return SAVED_MSRS.filter((m) => listed.has(m));
}

/** Writes the VM's state. The VM must be paused (all vCPUs parked). */
export async function saveVm(vm: Vm, sink: ByteSink, opts: SaveOptions): Promise<{ sections: number; ramBytes: number }> {
  let sections = 0;
  let ramBytes = 0;
  const put = async (name: string, version: number, payload: Buffer) => {
    await sink.write(encodeSection(name, version, payload));
    sections++;
  };
  await sink.write([encodeHeader()]);
  await put('machine', 1, encodeRecord({
    name: vm.config.name, memoryMiB: vm.config.memory.sizeMiB, vcpus: vm.config.vcpus, cpuModel: vm.config.cpuModel,
    ramShared: opts.ramShared, status: vm.statusBeforeSave ?? vm.status,
  }));
  if (!opts.ramShared) {
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
  const irqchips: { [k: string]: Buffer } = {};
  for (const id of KVM_IRQCHIP_IDS) irqchips[`chip${id}`] = native.kvmGetIrqchip(vm.vmFd, id);
  await put('kvm/irqchip', 1, encodeRecord({}, irqchips));
  await put('kvm/pit', 1, encodeRecord({}, { pit2: native.kvmGetPit2(vm.vmFd) }));
  await put('kvm/clock', 1, encodeRecord({}, { clock: native.kvmGetClock(vm.vmFd) }));
  const msrs = supportedSavedMsrs(vm);
  for (const vcpu of vm.vcpus) {
    const s = saveVcpuState(vcpu.fd, msrs);
    await put(`cpu/${vcpu.id}`, 1, encodeRecord({ msrs: s.msrs }, s.blobs));
  }
  for (const dev of deviceStateOwners(vm)) await put(dev.section, dev.version, encodeRecord(dev.save()));
  await sink.write([encodeEnd(sections)]);
  return { sections, ramBytes };
}

function isZero(bytes: Uint8Array): boolean {
  // Compare 8 bytes at a time where alignment allows.
  if (bytes.byteOffset % 8 === 0 && bytes.length % 8 === 0) {
    const words = new BigUint64Array(bytes.buffer, bytes.byteOffset, bytes.length / 8);
    for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
    return true;
  }
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}

interface Section { name: string; version: number; payload: Buffer }

async function readSection(src: ByteSource, after: string): Promise<Section | { end: number }> {
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
export async function restoreVm(vm: Vm, src: ByteSource): Promise<{ status: string }> {
  decodeHeader(await src.read(HEADER_SIZE, 'header'));
  const owners = new Map(deviceStateOwners(vm).map((d) => [d.section, d]));
  let count = 0;
  let last = 'header';
  let savedStatus = 'running';
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
    if (s.version !== 1 && !owners.has(s.name)) throw new StreamError(`section version ${s.version} is newer than this build reads (1)`, s.name);
    if (s.name === 'machine') {
      const m = rec.head as { memoryMiB: number; vcpus: number; status: string };
      if (m.memoryMiB !== vm.config.memory.sizeMiB) throw new StreamError(`saved VM has ${m.memoryMiB} MiB, this one ${vm.config.memory.sizeMiB} MiB`, s.name);
      if (m.vcpus !== vm.config.vcpus) throw new StreamError(`saved VM has ${m.vcpus} vCPUs, this one ${vm.config.vcpus}`, s.name);
      savedStatus = m.status;
      sawMachine = true;
    } else if (s.name === 'ram') {
      const { gpa } = rec.head as { gpa: number };
      const data = blob(rec, s.name, 'data');
      try { vm.memory.write(gpa, data); } catch { throw new StreamError(`chunk at 0x${Number(gpa).toString(16)} is outside guest RAM`, s.name); }
    } else if (s.name === 'kvm/irqchip') {
      for (const id of KVM_IRQCHIP_IDS) native.kvmSetIrqchip(vm.vmFd, blob(rec, s.name, `chip${id}`));
    } else if (s.name === 'kvm/pit') {
      native.kvmSetPit2(vm.vmFd, blob(rec, s.name, 'pit2'));
    } else if (s.name === 'kvm/clock') {
      native.kvmSetClock(vm.vmFd, blob(rec, s.name, 'clock'));
    } else if (s.name.startsWith('cpu/')) {
      const id = Number(s.name.slice(4));
      const vcpu = vm.vcpus[id];
      if (!vcpu) throw new StreamError(`no vCPU ${id} in this VM`, s.name);
      const state: VcpuState = { blobs: Object.fromEntries(rec.blobs), msrs: (rec.head as { msrs: [number, string][] }).msrs };
      try { restoreVcpuState(vcpu.fd, state); } catch (err) { throw new StreamError(`KVM refused the state: ${(err as Error).message}`, s.name); }
    } else {
      const owner = owners.get(s.name);
      if (!owner) throw new StreamError('unknown section (this build has no such device)', s.name);
      if (s.version > owner.version) throw new StreamError(`section version ${s.version} is newer than this build reads (${owner.version})`, s.name);
      owner.restore(rec.head);
    }
  }
  return { status: savedStatus };
}
