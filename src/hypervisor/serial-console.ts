/**
 * Where the guest's serial port goes outside the VM: an append-only log file (always, like
 * libvirt's <log file>) and a UNIX socket that console clients (`baton vm console`)
 * attach to — output is broadcast to all of them, their keystrokes go to the UART.
 */
import fs from 'node:fs';
import net from 'node:net';
import { loggerFor } from '../util/logger';

const log = loggerFor('console');

export class SerialConsole {
  private server?: net.Server;
  private readonly clients = new Set<net.Socket>();
  private logFd?: number;

  constructor(private readonly onInput: (data: Buffer) => void) {}

  /** The log file first and synchronously: not a byte the guest prints may be missed. */
  openLog(logFile?: string): void {
    if (logFile) this.logFd = fs.openSync(logFile, 'a', 0o600);
  }

  async openSocket(socket?: string): Promise<void> {
    if (socket) {
      const path = socket;
      try { fs.unlinkSync(path); } catch { /* no stale socket */ }
      this.server = net.createServer((sock) => {
        this.clients.add(sock);
        sock.on('data', (d) => this.onInput(d));
        sock.on('close', () => this.clients.delete(sock));
        sock.on('error', () => this.clients.delete(sock));
      });
      await new Promise<void>((resolve, reject) => {
        this.server!.once('error', reject);
        this.server!.listen(path, () => resolve());
      });
      fs.chmodSync(path, 0o600);
    }
  }

  write(bytes: Buffer): void {
    if (this.logFd !== undefined) {
      try { fs.writeSync(this.logFd, bytes); } catch (err) { log.warn(`serial log write failed: ${(err as Error).message}`); }
    }
    for (const c of this.clients) c.write(bytes);
  }

  close(): void {
    for (const c of this.clients) c.destroy();
    this.server?.close();
    if (this.logFd !== undefined) fs.closeSync(this.logFd);
    this.logFd = undefined;
  }
}
