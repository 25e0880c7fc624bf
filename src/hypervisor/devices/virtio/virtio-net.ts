/**
 * virtio-net (virtio 1.2 §5.1) over the modern virtio-pci transport, backed by a TAP.
 *
 * Queues: rx0, tx0, rx1, tx1, ..., then the control queue. Queue pair i reads and writes
 * TAP queue fd i. Frames move between the TAP and guest RAM with readvBatch/writevBatch
 * straight into the guest's buffers (no copy, no allocation per packet); the 12-byte
 * virtio-net header travels through the TAP's own vnet header (TUNSETVNETHDRSZ 12), and the
 * guest offloads it negotiated are applied with TUNSETOFFLOAD.
 *
 * Data moves only while the device is live: DRIVER_OK, not NEEDS_RESET, the VM running
 * ({@link VirtioNetDevice.setRunning}) and the backend has its fds.
 */
import { native } from '../../../native';
import type { FdWatch } from '../../../native/io';
import { TAP } from '../../../native/io';
import { loggerFor } from '../../../util/logger';
import { trace, tracing } from '../../../util/trace';
import type { DeviceStateOwner } from '../../migration/vm-state';
import { TapBackend, TapBackendState } from '../../net/tap-backend';
import type { IrqLine } from '../io-bus';
import {
  FeatureBits, NET_F, PCI_CLASS_NETWORK_ETHERNET, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, VIRTIO_ID_NET,
  VIRTIO_NET_CONFIG, VIRTIO_NET_CTRL, VIRTIO_NET_HDR_NUM_BUFFERS, VIRTIO_NET_HDR_SIZE, VIRTIO_NET_S_LINK_UP,
  STATUS_DRIVER_OK, VIRTIO_RING_F_EVENT_IDX, featureSet, hasFeature,
} from './constants';
import { GsiRouter } from './gsi-router';
import { VirtioDeviceModel, VirtioPciState, VirtioPciTransport } from './virtio-pci';
import {
  DEVICE_READS, DEVICE_WRITES, DmaSpace, IovTable, MAX_QUEUE_SIZE, MAX_SKIP, POP_EMPTY, READS_THEN_WRITES, Virtqueue,
  VirtioViolation,
} from './virtqueue';

const log = loggerFor('virtio-net');

/** Packets per readvBatch / writevBatch call. */
const BATCH_PACKETS = 64;
/** Batches per wake-up before yielding to the event loop (the poll is level-triggered: we come back). */
const BATCHES_PER_WAKEUP = 4;
/**
 * Receive buffers taken for a wake-up's first read: most wake-ups find a few frames, and
 * buffers taken but not filled are given back, so taking 64 cost more than the read (~0.2 ms
 * for the first 64 in a fresh destination's switchover). A full first batch means more are
 * waiting: the next ones take BATCH_PACKETS.
 */
const FIRST_RX_BATCH = 8;
/** One packet's pair limit: the addon's iovec limit. */
const MAX_PAIRS_PER_PACKET = Math.min(native.maxIovPerPacket, MAX_QUEUE_SIZE);
const TABLE_PAIRS = BATCH_PACKETS * 16 + MAX_PAIRS_PER_PACKET;
/** Largest frame without guest TSO: 1514 + a VLAN tag. */
const MAX_PLAIN_FRAME = 1518;
/** Largest GSO frame the TAP may hand us with guest TSO on. */
const MAX_GSO_FRAME = 65550;
/** Control requests we read (class, command, data); longer ones (big MAC tables) are acked unread. */
const CTRL_MAX_REQUEST = 4096;

/** One queue pair and its TAP fd, with tables preallocated for the hot path. */
class QueuePair {
  fd = -1;
  watch?: FdWatch;
  watching = '';
  wantRead = false;
  wantWrite = false;
  readonly rxTable = new IovTable(TABLE_PAIRS, BATCH_PACKETS);
  readonly rxHeads = new Uint16Array(TABLE_PAIRS);
  readonly rxChainBytes = new Float64Array(TABLE_PAIRS);
  readonly rxFirstChain = new Uint32Array(BATCH_PACKETS);
  readonly rxChainCount = new Uint32Array(BATCH_PACKETS);
  readonly rxPairStart = new Uint32Array(BATCH_PACKETS);
  readonly txTable = new IovTable(TABLE_PAIRS, BATCH_PACKETS);
  readonly txHeads = new Uint16Array(BATCH_PACKETS);
  readonly stats = { rxPackets: 0, rxBytes: 0, txPackets: 0, txErrors: 0, rxNoBuffers: 0, readErrors: 0, replayed: 0 };
  /**
   * Frames to deliver before anything newer from the TAP (netpass: what the migration
   * source buffered during the switchover), exactly as a TAP readv would return them.
   */
  replay: Buffer[] = [];
  /** Bound once: continues transmitting on the next loop turn when a wake-up's budget ran out. */
  txLater: () => void = () => undefined;

  constructor(readonly index: number, readonly rx: Virtqueue, readonly tx: Virtqueue) {}
}

export interface VirtioNetOptions {
  /** Device id; the migration section is `dev/net/<id>`. */
  id: string;
  backend: TapBackend;
  /** aa:bb:cc:dd:ee:ff; default 52:54:00:12:34:56 (QEMU's), last byte + slot. */
  mac?: string;
  /** Offer multiqueue (default: when the backend has more than one queue). */
  mq?: boolean;
  /** Largest queue size offered (power of two, <= 256). */
  queueSize?: number;
}

export interface VirtioNetState {
  transport: VirtioPciState;
  mac: string;
  linkUp: boolean;
  activePairs: number;
  backend: TapBackendState;
}

export class VirtioNetDevice implements VirtioDeviceModel, DeviceStateOwner {
  readonly deviceType = VIRTIO_ID_NET;
  readonly pciClass = PCI_CLASS_NETWORK_ETHERNET;
  readonly configSize = VIRTIO_NET_CONFIG.size;
  readonly section: string;
  readonly version = 1;
  readonly queues: Virtqueue[] = [];
  readonly pairs: QueuePair[] = [];
  readonly ctrl?: Virtqueue;
  readonly transport: VirtioPciTransport;
  readonly mac = new Uint8Array(6);
  linkUp = true;
  activePairs = 1;
  private running = false;
  /** BATON_TRACE: the first frames each way after a resume are traced (a migration's pause ends there). */
  private traceRx = false;
  private traceTx = false;
  private driverOk = false;
  private features: FeatureBits = { lo: 0, hi: 0 };
  private offered: FeatureBits;
  /** Bytes skipped at the front of chains when the TAP has no vnet header (we write the header). */
  private hdrSkip = 0;
  private rxHeld = false;
  private mergeable = false;
  private rxNeed = MAX_PLAIN_FRAME + VIRTIO_NET_HDR_SIZE;
  private readonly configBytes = new Uint8Array(VIRTIO_NET_CONFIG.size);
  private readonly configView = new DataView(this.configBytes.buffer);
  private readonly ctrlTable = new IovTable(MAX_PAIRS_PER_PACKET, 1);
  private readonly ctrlRequest = new Uint8Array(CTRL_MAX_REQUEST);
  private readonly hdrBytes = new Uint8Array(VIRTIO_NET_HDR_SIZE);
  readonly stats = { ctrlCommands: 0, configInterrupts: 0 };

  constructor(
    readonly name: string,
    readonly options: VirtioNetOptions,
    private readonly dma: DmaSpace,
    host: { vmFd: number; mmio: import('../io-bus').IoBus; router: GsiRouter; intx: IrqLine; intxGsi: number },
  ) {
    this.section = `dev/net/${options.id}`;
    const queueSize = options.queueSize ?? MAX_QUEUE_SIZE;
    if (queueSize < 2 || queueSize > MAX_QUEUE_SIZE || (queueSize & (queueSize - 1)) !== 0) {
      throw new Error(`virtio-net ${options.id}: queue size ${queueSize} must be a power of two in 2..${MAX_QUEUE_SIZE}`);
    }
    const nPairs = options.backend.queues;
    const mq = options.mq ?? nPairs > 1;
    if (nPairs > 1 && !mq) throw new Error(`virtio-net ${options.id}: the netdev has ${nPairs} queues; multiqueue needs mq=on`);
    for (let i = 0; i < nPairs; i++) {
      const rx = new Virtqueue(2 * i, `${options.id} rx${i}`, queueSize);
      const tx = new Virtqueue(2 * i + 1, `${options.id} tx${i}`, queueSize);
      this.queues.push(rx, tx);
      const pair = new QueuePair(i, rx, tx);
      pair.txLater = () => this.transport.guarded(() => this.processTx(pair));
      this.pairs.push(pair);
    }
    this.ctrl = new Virtqueue(2 * nPairs, `${options.id} ctrl`, 64);
    this.queues.push(this.ctrl);
    setMac(this.mac, options.mac ?? '52:54:00:12:34:56');
    this.offered = this.computeOffer(mq && nPairs > 1);
    this.refreshConfig();
    this.transport = new VirtioPciTransport(name, { ...host, dma }, this);
  }

  private computeOffer(mq: boolean): FeatureBits {
    const bits: number[] = [
      VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, NET_F.MAC, NET_F.STATUS, NET_F.MRG_RXBUF,
      NET_F.CTRL_VQ, NET_F.CTRL_RX, NET_F.CTRL_MAC_ADDR,
    ];
    if (mq) bits.push(NET_F.MQ);
    const b = this.options.backend;
    // Offloads need the TAP's vnet header (an incoming-fds netdev will get the TAP it had).
    if (b.waitingForFds || b.vnetHdr) {
      bits.push(NET_F.CSUM, NET_F.HOST_TSO4, NET_F.HOST_TSO6, NET_F.HOST_ECN, NET_F.GUEST_CSUM);
      if (b.waitingForFds || tapAcceptsTso(b.fds[0])) bits.push(NET_F.GUEST_TSO4, NET_F.GUEST_TSO6, NET_F.GUEST_ECN);
    }
    return featureSet(bits);
  }

  // ---------------------------------------------------------------- VirtioDeviceModel

  deviceFeatures(): FeatureBits {
    return this.offered;
  }

  checkFeatures(d: FeatureBits): string | undefined {
    const has = (bit: number) => hasFeature(d, bit);
    for (const g of [NET_F.GUEST_TSO4, NET_F.GUEST_TSO6, NET_F.GUEST_ECN, NET_F.GUEST_UFO]) if (has(g) && !has(NET_F.GUEST_CSUM)) return `guest offload bit ${g} without GUEST_CSUM`;
    for (const h of [NET_F.HOST_TSO4, NET_F.HOST_TSO6, NET_F.HOST_ECN, NET_F.HOST_UFO]) if (has(h) && !has(NET_F.CSUM)) return `host offload bit ${h} without CSUM`;
    if (has(NET_F.HOST_ECN) && !has(NET_F.HOST_TSO4) && !has(NET_F.HOST_TSO6)) return 'HOST_ECN without HOST_TSO4/6';
    if (has(NET_F.GUEST_ECN) && !has(NET_F.GUEST_TSO4) && !has(NET_F.GUEST_TSO6)) return 'GUEST_ECN without GUEST_TSO4/6';
    for (const c of [NET_F.CTRL_RX, NET_F.CTRL_VLAN, NET_F.GUEST_ANNOUNCE, NET_F.MQ, NET_F.CTRL_MAC_ADDR]) if (has(c) && !has(NET_F.CTRL_VQ)) return `feature bit ${c} needs CTRL_VQ`;
    return undefined;
  }

  configRead(offset: number, size: number): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + this.configBytes[offset + i];
    return v;
  }

  /** The modern config is read-only for the driver (the MAC changes through the control queue). */
  configWrite(): void {
    // ignored, as the spec asks of a VERSION_1 device
  }

  activate(features: FeatureBits): void {
    this.features = { ...features };
    this.driverOk = true;
    this.applyNegotiated();
    this.activePairs = 1;
    this.applyQueueAttachment();
    this.startDataPath();
  }

  /** Header handling, RX buffer sizing and TAP offloads from the negotiated features. */
  private applyNegotiated(): void {
    const f = this.features;
    const b = this.options.backend;
    this.mergeable = hasFeature(f, NET_F.MRG_RXBUF);
    const guestGso = hasFeature(f, NET_F.GUEST_TSO4) || hasFeature(f, NET_F.GUEST_TSO6) || hasFeature(f, NET_F.GUEST_UFO);
    this.rxNeed = (guestGso ? MAX_GSO_FRAME : MAX_PLAIN_FRAME) + VIRTIO_NET_HDR_SIZE;
    this.hdrSkip = b.vnetHdr ? 0 : VIRTIO_NET_HDR_SIZE;
    if (b.waitingForFds) return;
    b.setVnetHdrSize(VIRTIO_NET_HDR_SIZE);
    let tun = 0;
    if (hasFeature(f, NET_F.GUEST_CSUM)) tun |= TAP.TUN_F_CSUM;
    if (hasFeature(f, NET_F.GUEST_TSO4)) tun |= TAP.TUN_F_TSO4;
    if (hasFeature(f, NET_F.GUEST_TSO6)) tun |= TAP.TUN_F_TSO6;
    if (hasFeature(f, NET_F.GUEST_ECN)) tun |= TAP.TUN_F_TSO_ECN;
    b.setOffload(tun);
  }

  quiesce(): void {
    this.driverOk = false;
    for (const p of this.pairs) {
      p.wantRead = p.wantWrite = false;
      this.updateWatch(p);
    }
  }

  queueNotify(q: number): void {
    if (this.ctrl && q === this.ctrl.index) {
      this.processCtrl();
      return;
    }
    const pair = this.pairs[q >> 1];
    if (!pair || !this.live || pair.index >= this.activePairs) return;
    if (q & 1) this.processTx(pair);
    else {
      // New receive buffers: read the TAP again.
      pair.wantRead = this.linkUp && !this.rxHeld;
      this.updateWatch(pair);
      this.processRx(pair);
    }
  }

  // ---------------------------------------------------------------- run state and link

  private get live(): boolean {
    return this.driverOk && this.running && !this.transport.stopped && this.options.backend.fds.length > 0;
  }

  /** Follows the VM's run state: a paused VM's NIC moves no data (its RAM and rings must hold still). */
  setRunning(running: boolean): void {
    if (running === this.running) return;
    this.running = running;
    this.traceRx = this.traceTx = tracing && running;
    trace(`${this.name}: ${running ? 'running' : 'stopped'}`);
    // At once: frames that queued on the TAP while the VM was paused (a migration's
    // switchover) are the guest's pause as its peers see it.
    if (running) this.startDataPath();
    else for (const p of this.pairs) { p.wantRead = p.wantWrite = false; this.updateWatch(p); }
  }

  /** `set_link`: the guest sees carrier loss (config status and a config interrupt); no data moves while down. */
  setLink(up: boolean): void {
    if (up === this.linkUp) return;
    this.linkUp = up;
    this.refreshConfig();
    this.stats.configInterrupts++;
    this.transport.signalConfigChange();
    if (up) this.startDataPath();
    else for (const p of this.pairs) { p.wantRead = false; this.updateWatch(p); }
  }

  private startDataPath(): void {
    if (!this.live) return;
    for (const p of this.pairs) {
      if (p.index >= this.activePairs) continue;
      p.fd = this.options.backend.fds[p.index];
      this.transport.guarded(() => {
        if (!p.rx.ready || !p.tx.ready) return;
        p.wantRead = this.linkUp && !this.rxHeld;
        this.updateWatch(p);
        this.processTx(p);
        this.processRx(p);
      });
    }
  }

  private refreshConfig(): void {
    this.configBytes.set(this.mac, 0);
    VIRTIO_NET_CONFIG.set(this.configView, 0, 'status', this.linkUp ? VIRTIO_NET_S_LINK_UP : 0);
    VIRTIO_NET_CONFIG.set(this.configView, 0, 'max_virtqueue_pairs', this.pairs.length);
    VIRTIO_NET_CONFIG.set(this.configView, 0, 'mtu', 1500);
  }

  /** On a multi-queue TAP, detach the queues the guest does not use, so the kernel steers nothing there. */
  private applyQueueAttachment(): void {
    const b = this.options.backend;
    if (b.fds.length < 2) return;
    b.fds.forEach((fd, i) => {
      try {
        native.tapSetQueue(fd, i < this.activePairs);
      } catch (err) {
        // EINVAL when the queue already is in that state.
        if ((err as NodeJS.ErrnoException).code !== 'EINVAL') log.warn(`${this.name}: TUNSETQUEUE on queue ${i}: ${(err as Error).message}`);
      }
    });
  }

  // ---------------------------------------------------------------- fd watches

  private updateWatch(p: QueuePair): void {
    const events = !this.live ? '' : p.wantRead && p.wantWrite ? 'rw' : p.wantRead ? 'r' : p.wantWrite ? 'w' : '';
    if (events === p.watching) return;
    if (events === '') {
      p.watch?.stop();
      p.watch = undefined;
    } else if (p.watch) {
      p.watch.update(events);
    } else {
      p.watch = native.fdWatch(p.fd, events, (readable, writable) => this.onTapReady(p, readable, writable));
    }
    p.watching = events;
  }

  private onTapReady(p: QueuePair, readable: boolean, writable: boolean): void {
    this.transport.guarded(() => {
      if (writable && p.wantWrite) {
        p.wantWrite = false;
        this.updateWatch(p);
        this.processTx(p);
      }
      if (readable && p.wantRead) this.processRx(p);
    });
  }

  // ---------------------------------------------------------------- transmit: guest -> TAP

  private processTx(p: QueuePair): void {
    if (!this.live || p.index >= this.activePairs || !p.tx.ready) return;
    const tx = p.tx;
    const t = p.txTable;
    let completed = 0;
    for (let round = 0; round < BATCHES_PER_WAKEUP; round++) {
      t.reset();
      let n = 0;
      while (n < BATCH_PACKETS && t.pairs + MAX_PAIRS_PER_PACKET <= t.maxPairs) {
        const start = t.pairs;
        const head = tx.pop(t, DEVICE_READS, MAX_PAIRS_PER_PACKET, this.hdrSkip, n);
        if (head === POP_EMPTY) break;
        if (head < 0) throw new VirtioViolation(tx.name, 'a transmit chain needs more buffers than one packet may have');
        if (t.pairs === start) { // an empty frame: nothing to send
          tx.pushUsed(head, 0);
          completed++;
          continue;
        }
        p.txHeads[n] = head;
        t.iovCounts[n] = t.pairs - start;
        n++;
      }
      if (n === 0) break;
      let written: number;
      if (!this.linkUp) {
        written = n; // link down: frames are dropped, as on a cable that is unplugged
      } else {
        try {
          written = native.writevBatch(p.fd, this.dma.bytes, t.iovs, t.iovCounts, n);
        } catch (err) {
          // The first frame was refused (bad vnet header, oversized, TAP down): drop it, keep going.
          p.stats.txErrors++;
          if (p.stats.txErrors <= 10) log.warn(`${this.name}: tx${p.index}: frame dropped: ${(err as Error).message}`);
          written = 1;
          tx.rewind(n - 1);
          tx.pushUsed(p.txHeads[0], 0);
          completed++;
          continue;
        }
      }
      for (let i = 0; i < written; i++) tx.pushUsed(p.txHeads[i], 0);
      // Publish per batch: the driver reclaims these buffers while we send the next ones.
      if (written > 0) tx.publishUsed();
      completed += written;
      p.stats.txPackets += written;
      if (this.traceTx && written > 0) { this.traceTx = false; trace(`${this.name}: first tx`); }
      if (written < n) {
        // The TAP is full: give the rest back and wait until it is writable.
        tx.rewind(n - written);
        p.wantWrite = true;
        this.updateWatch(p);
        break;
      }
      if (n < BATCH_PACKETS && !tx.armNotification()) break;
    }
    if (completed > 0) {
      tx.publishUsed();
      if (tx.needsInterrupt()) this.transport.signalQueue(tx);
    }
    if (!p.wantWrite && tx.armNotification()) setImmediate(p.txLater);
  }

  // ---------------------------------------------------------------- receive: TAP -> guest

  /** Fills up to `nPk` popped packets from the replay queue, as readvBatch fills them from the TAP. */
  private copyReplay(p: QueuePair, nPk: number): number {
    const t = p.rxTable;
    const bytes = this.dma.bytes;
    let k = 0;
    for (; k < nPk && p.replay.length; k++) {
      const frame = p.replay.shift() as Buffer;
      let at = 0;
      const end = p.rxPairStart[k] + t.iovCounts[k];
      for (let i = p.rxPairStart[k]; i < end && at < frame.length; i++) {
        const take = Math.min(t.iovs[2 * i + 1], frame.length - at);
        bytes.set(frame.subarray(at, at + take), t.iovs[2 * i]);
        at += take;
      }
      t.lengths[k] = at; // a frame larger than the buffers is truncated, as readv would
      p.stats.replayed++;
    }
    // A short batch would read as "TAP empty": deliver the TAP's frames on the next turn.
    if (k < nPk && !p.replay.length) setImmediate(() => this.transport.guarded(() => this.processRx(p)));
    return k;
  }

  /**
   * Netpass on the destination: while held, nothing is read from the TAP, so frames the
   * source buffered (given to `replayRx`) reach the guest before newer ones.
   */
  holdRx(on: boolean): void {
    if (on === this.rxHeld) return;
    this.rxHeld = on;
    if (on) {
      for (const p of this.pairs) { p.wantRead = false; this.updateWatch(p); }
    } else {
      this.startDataPath();
    }
  }

  /** Queues frames for delivery ahead of the TAP's (see holdRx); frames land on queue pair `pair`. */
  replayRx(frames: Buffer[], pair = 0): void {
    const p = this.pairs[Math.min(pair, Math.max(0, this.activePairs - 1))];
    if (!p) return;
    p.replay.push(...frames);
    if (!this.rxHeld) this.startDataPath();
  }

  private processRx(p: QueuePair): void {
    if (!this.live || !p.wantRead || this.rxHeld || p.index >= this.activePairs || !p.rx.ready) return;
    const rx = p.rx;
    const t = p.rxTable;
    let completed = 0;
    let batch = FIRST_RX_BATCH;
    for (let round = 0; round < BATCHES_PER_WAKEUP; round++) {
      t.reset();
      let nPk = 0;
      let nChains = 0;
      while (nPk < batch && t.pairs + MAX_PAIRS_PER_PACKET <= t.maxPairs) {
        const pairStart = t.pairs;
        const head = rx.pop(t, DEVICE_WRITES, MAX_PAIRS_PER_PACKET, this.hdrSkip, nPk);
        if (head === POP_EMPTY) break;
        if (head < 0) throw new VirtioViolation(rx.name, 'a receive chain needs more buffers than one packet may have');
        if (t.pairs === pairStart || t.lastChainBytes + this.hdrSkip < VIRTIO_NET_HDR_SIZE) {
          throw new VirtioViolation(rx.name, `receive buffer at descriptor ${head} holds ${t.lastChainBytes + this.hdrSkip} bytes, less than the ${VIRTIO_NET_HDR_SIZE}-byte header`);
        }
        const first = nChains;
        p.rxHeads[nChains] = head;
        p.rxChainBytes[nChains++] = t.lastChainBytes;
        let capacity = t.lastChainBytes + this.hdrSkip;
        if (this.mergeable) {
          // Small buffers: take more chains for this frame, up to the largest frame we may get.
          while (capacity < this.rxNeed && nChains < p.rxHeads.length) {
            const more = rx.pop(t, DEVICE_WRITES, MAX_PAIRS_PER_PACKET - (t.pairs - pairStart));
            if (more < 0) break;
            p.rxHeads[nChains] = more;
            p.rxChainBytes[nChains++] = t.lastChainBytes;
            capacity += t.lastChainBytes;
          }
        }
        p.rxFirstChain[nPk] = first;
        p.rxChainCount[nPk] = nChains - first;
        p.rxPairStart[nPk] = pairStart;
        t.iovCounts[nPk] = t.pairs - pairStart;
        nPk++;
        // Only the last frame of a batch may hold extra chains, so unused ones are at the tail.
        if (nChains - first > 1) break;
      }
      if (nPk === 0) {
        p.stats.rxNoBuffers++;
        if (rx.armNotification()) continue; // buffers arrived meanwhile
        p.wantRead = false; // until the driver posts buffers (its notification re-enables)
        this.updateWatch(p);
        break;
      }
      let n: number;
      try {
        n = p.replay.length ? this.copyReplay(p, nPk) : native.readvBatch(p.fd, this.dma.bytes, t.iovs, t.iovCounts, nPk, t.lengths);
      } catch (err) {
        p.stats.readErrors++;
        if (p.stats.readErrors <= 10) log.warn(`${this.name}: rx${p.index}: reading the TAP: ${(err as Error).message}`);
        n = 0;
      }
      let consumed = 0;
      for (let k = 0; k < n; k++) {
        const frame = t.lengths[k] + this.hdrSkip;
        let left = frame;
        let used = 0;
        const first = p.rxFirstChain[k];
        const count = p.rxChainCount[k];
        for (let c = 0; c < count && left > 0; c++) {
          const cap = p.rxChainBytes[first + c] + (c === 0 ? this.hdrSkip : 0);
          const len = Math.min(cap, left);
          rx.pushUsed(p.rxHeads[first + c], len);
          left -= len;
          used++;
        }
        consumed += used;
        this.writeHeader(p, k, used);
        p.stats.rxBytes += frame - VIRTIO_NET_HDR_SIZE;
      }
      // Chains taken but not filled (frames not read, or a merged frame's spare chains) are
      // the last ones taken: give them back.
      rx.rewind(nChains - consumed);
      // Publish per batch: the driver consumes these frames while we read the next ones.
      if (n > 0) rx.publishUsed();
      completed += n;
      p.stats.rxPackets += n;
      if (this.traceRx && n > 0) { this.traceRx = false; trace(`${this.name}: first rx`); }
      if (n < nPk) break; // the TAP is empty
      batch = BATCH_PACKETS;
    }
    if (completed > 0) {
      rx.publishUsed();
      if (rx.needsInterrupt()) this.transport.signalQueue(rx);
    }
  }

  /**
   * num_buffers (and, without a TAP vnet header, the whole zero header) for frame `k`,
   * written through the frame's pairs so any buffer layout works.
   */
  private writeHeader(p: QueuePair, k: number, numBuffers: number): void {
    const bytes = this.dma.bytes;
    const t = p.rxTable;
    if (this.hdrSkip) {
      const h = this.hdrBytes;
      h.fill(0);
      h[VIRTIO_NET_HDR_NUM_BUFFERS] = numBuffers & 0xff;
      h[VIRTIO_NET_HDR_NUM_BUFFERS + 1] = numBuffers >>> 8;
      for (let i = 0; i < MAX_SKIP; i++) bytes[t.skipped[k * MAX_SKIP + i]] = h[i];
      return;
    }
    let pos = 0;
    let pair = p.rxPairStart[k];
    const end = pair + t.iovCounts[k];
    for (let at = VIRTIO_NET_HDR_NUM_BUFFERS; at < VIRTIO_NET_HDR_SIZE && pair < end;) {
      const len = t.iovs[pair * 2 + 1];
      if (at < pos + len) {
        bytes[t.iovs[pair * 2] + (at - pos)] = at === VIRTIO_NET_HDR_NUM_BUFFERS ? numBuffers & 0xff : numBuffers >>> 8;
        at++;
      } else {
        pos += len;
        pair++;
      }
    }
  }

  // ---------------------------------------------------------------- control queue

  private processCtrl(): void {
    const q = this.ctrl!;
    if (!this.driverOk || this.transport.stopped || !q.ready) return;
    let any = false;
    for (;;) {
      const t = this.ctrlTable;
      t.reset();
      const head = q.pop(t, READS_THEN_WRITES, MAX_PAIRS_PER_PACKET);
      if (head === POP_EMPTY) break;
      if (head < 0) throw new VirtioViolation(q.name, 'control request has too many buffers');
      const readable = t.lastReadablePairs;
      if (readable === t.pairs) throw new VirtioViolation(q.name, `control request at descriptor ${head} has no buffer for the ack`);
      // Gather the request (class, command, data) into a small buffer.
      let len = 0;
      for (let i = 0; i < readable && len < CTRL_MAX_REQUEST; i++) {
        const off = t.iovs[i * 2];
        const l = Math.min(t.iovs[i * 2 + 1], CTRL_MAX_REQUEST - len);
        this.ctrlRequest.set(this.dma.bytes.subarray(off, off + l), len);
        len += l;
      }
      const ack = len < 2 ? VIRTIO_NET_CTRL.ERR : this.ctrlCommand(this.ctrlRequest[0], this.ctrlRequest[1], this.ctrlRequest.subarray(2, len));
      this.stats.ctrlCommands++;
      this.dma.bytes[t.iovs[readable * 2]] = ack;
      q.pushUsed(head, 1);
      any = true;
    }
    if (any) {
      q.publishUsed();
      if (q.needsInterrupt()) this.transport.signalQueue(q);
    }
    q.armNotification();
  }

  private ctrlCommand(cls: number, cmd: number, data: Uint8Array): number {
    const C = VIRTIO_NET_CTRL;
    const f = this.features;
    if (cls === C.RX && hasFeature(f, NET_F.CTRL_RX) && cmd <= C.RX_NOBCAST && data.length >= 1) {
      // Accepted; the TAP is point-to-point so every frame it gives us is for this NIC (we deliver as if promiscuous).
      return C.OK;
    }
    if (cls === C.MAC && cmd === C.MAC_TABLE_SET && hasFeature(f, NET_F.CTRL_RX)) return C.OK;
    if (cls === C.MAC && cmd === C.MAC_ADDR_SET && hasFeature(f, NET_F.CTRL_MAC_ADDR) && data.length >= 6) {
      this.mac.set(data.subarray(0, 6));
      this.refreshConfig();
      return C.OK;
    }
    if (cls === C.MQ && cmd === C.MQ_VQ_PAIRS_SET && hasFeature(f, NET_F.MQ) && data.length >= 2) {
      const n = data[0] | (data[1] << 8);
      if (n < C.MQ_VQ_PAIRS_MIN || n > this.pairs.length) return C.ERR;
      this.setActivePairs(n);
      return C.OK;
    }
    return C.ERR;
  }

  private setActivePairs(n: number): void {
    const before = this.activePairs;
    this.activePairs = n;
    for (const p of this.pairs) {
      if (p.index >= n && p.index < before) { p.wantRead = p.wantWrite = false; this.updateWatch(p); }
    }
    this.applyQueueAttachment();
    this.startDataPath();
  }

  // ---------------------------------------------------------------- migration

  save(): VirtioNetState {
    return {
      transport: this.transport.save(),
      mac: macString(this.mac),
      linkUp: this.linkUp,
      activePairs: this.activePairs,
      backend: this.options.backend.save(),
    };
  }

  /**
   * Restores into this (freshly attached, same shape) device: transport and queues first
   * (BAR, ioeventfds, MSI routes), then the NIC's own state, then the TAP's header size and
   * offloads, and the data path resumes when the VM runs.
   */
  restore(state: unknown): void {
    const s = state as VirtioNetState;
    if (s.backend.queues && s.backend.queues !== this.pairs.length) {
      throw new Error(`${this.section}: saved NIC has ${s.backend.queues} queue pairs, this one ${this.pairs.length}`);
    }
    this.quiesce();
    this.transport.restore(s.transport);
    setMac(this.mac, s.mac);
    this.linkUp = s.linkUp;
    this.refreshConfig();
    this.features = { ...this.transport.driverFeatures };
    this.activePairs = Math.max(1, Math.min(s.activePairs, this.pairs.length));
    if (this.transport.status & STATUS_DRIVER_OK && !this.transport.stopped) {
      this.driverOk = true;
      this.applyNegotiated();
      if (!this.options.backend.waitingForFds) this.options.backend.restore(s.backend);
      this.applyQueueAttachment();
      this.startDataPath();
    }
  }

  /** Removes the device from KVM and the buses (the PCI slot stays until PciHost can remove). Keeps the backend open. */
  detach(): void {
    this.quiesce();
    this.transport.destroy();
  }

  /** Queue-pair statistics (introspection). */
  pairStats(): QueuePair['stats'][] {
    return this.pairs.map((p) => ({ ...p.stats }));
  }
}

/** Whether the TAP takes guest TSO offloads (probe, then back to none). */
function tapAcceptsTso(fd: number): boolean {
  try {
    native.tapSetOffload(fd, TAP.TUN_F_CSUM | TAP.TUN_F_TSO4 | TAP.TUN_F_TSO6 | TAP.TUN_F_TSO_ECN);
    native.tapSetOffload(fd, 0);
    return true;
  } catch {
    return false;
  }
}

export function setMac(out: Uint8Array, text: string): void {
  const m = /^([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2})$/i.exec(text);
  if (!m) throw new Error(`MAC address "${text}" is not six hex bytes separated by ":"`);
  for (let i = 0; i < 6; i++) out[i] = parseInt(m[i + 1], 16);
  if (out[0] & 1) throw new Error(`MAC address "${text}" is a multicast address; a NIC needs a unicast one`);
}

export function macString(mac: Uint8Array): string {
  return [...mac].map((b) => b.toString(16).padStart(2, '0')).join(':');
}
