import net from 'node:net';
import { domainState } from '../domain/runtime';
import { DomainStore } from '../domain/store';
import { BatonError } from '../util/errors';
import { ManagerErrorCode } from './errors';

/**
 * `vm console`: joins the domain's serial console socket (raw bytes both ways; baton-hv
 * broadcasts output to every attached client). Ctrl-] (0x1d), virsh's escape, leaves; the
 * byte never reaches the guest.
 */
export const CONSOLE_ESCAPE_BYTE = 0x1d;

export interface ConsoleIo {
  input: NodeJS.ReadableStream;
  output: NodeJS.WritableStream;
}

/** Why the session ended: the user pressed Ctrl-], or the hypervisor closed the console (domain stopped). */
export type ConsoleEnd = 'escape' | 'closed';

export interface ConsoleSession {
  name: string;
  /** Resolves when the session ends. */
  ended: Promise<ConsoleEnd>;
}

/** Connects to the console of a running domain and relays `io` until Ctrl-] or the console closes. */
export async function attachConsole(store: DomainStore, nameOrUuid: string, io: ConsoleIo): Promise<ConsoleSession> {
  const domain = store.get(nameOrUuid);
  const status = domainState(store.paths, domain.name);
  if (!status.active) {
    throw new BatonError(ManagerErrorCode.NotActive, `domain '${domain.name}' is not running; start it with 'baton vm start ${domain.name} --console'`, { domain: domain.name });
  }
  if (!domain.serial) {
    throw new BatonError(ManagerErrorCode.NoConsole, `domain '${domain.name}' has no console: its definition has no <serial type='pty'/>; its serial output is still logged in the log directory`, { domain: domain.name });
  }
  const socketPath = status.active.consoleSocket;
  const socket = net.connect(socketPath);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('error', (err) => reject(new BatonError(ManagerErrorCode.NoConsole, `cannot attach to the console of '${domain.name}' at ${socketPath}: ${err.message}`, { domain: domain.name })));
  });

  const ended = new Promise<ConsoleEnd>((resolve) => {
    let done = false;
    const finish = (how: ConsoleEnd): void => {
      if (done) return;
      done = true;
      io.input.off('data', onInput);
      socket.destroy();
      resolve(how);
    };
    const onInput = (chunk: Buffer | string): void => {
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      const escapeAt = bytes.indexOf(CONSOLE_ESCAPE_BYTE);
      if (escapeAt < 0) {
        socket.write(bytes);
        return;
      }
      if (escapeAt > 0) socket.write(bytes.subarray(0, escapeAt));
      finish('escape');
    };
    socket.on('data', (bytes: Buffer) => io.output.write(bytes));
    socket.on('close', () => finish('closed'));
    socket.on('error', () => finish('closed'));
    io.input.on('data', onInput);
  });
  return { name: domain.name, ended };
}
