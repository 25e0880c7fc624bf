/**
 * File descriptors that reach the monitor with SCM_RIGHTS.
 *
 * Two places hold them, with one owner each:
 *  - QmpMessageFds: the fds that arrived with one command's bytes. The command may claim
 *    them (getfd claims one; a future command taking several fds claims them all); whatever
 *    is unclaimed when the command finishes is closed, so a client cannot leak fds into the
 *    hypervisor by sending them with the wrong command.
 *  - QmpFdTable: fds a client named with `getfd`, per connection (as QEMU's are per monitor).
 *    Handlers look them up by name and `take` them, which moves ownership to the handler
 *    (e.g. a TAP backend); `closefd` and the connection's end close the rest.
 */
import { closeQuietly } from '../../native';


export class QmpMessageFds {
  private pending: number[];

  constructor(fds: readonly number[]) {
    this.pending = [...fds];
  }

  get count(): number {
    return this.pending.length;
  }

  /** Claims the first fd that came with the command, or undefined if none did. */
  takeOne(): number | undefined {
    return this.pending.shift();
  }

  /** Claims every fd that came with the command. */
  takeAll(): number[] {
    const all = this.pending;
    this.pending = [];
    return all;
  }

  /** Closes what nobody claimed. */
  closeUnclaimed(): void {
    for (const fd of this.takeAll()) closeQuietly(fd);
  }
}

export class QmpFdTable {
  private readonly byName = new Map<string, number>();

  /** Names an fd (getfd). An fd already under that name is closed and replaced, as in QEMU. */
  add(name: string, fd: number): void {
    const previous = this.byName.get(name);
    if (previous !== undefined && previous !== fd) closeQuietly(previous);
    this.byName.set(name, fd);
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  /** Looks an fd up without taking it; the table still owns it. */
  peek(name: string): number | undefined {
    return this.byName.get(name);
  }

  /** Removes the named fd and hands its ownership to the caller. */
  take(name: string): number | undefined {
    const fd = this.byName.get(name);
    this.byName.delete(name);
    return fd;
  }

  /** closefd: closes the named fd; false when there is none by that name. */
  close(name: string): boolean {
    const fd = this.take(name);
    if (fd === undefined) return false;
    closeQuietly(fd);
    return true;
  }

  names(): string[] {
    return [...this.byName.keys()];
  }

  /** The connection is gone: nobody can name these fds any more. */
  closeAll(): void {
    for (const name of this.names()) this.close(name);
  }
}
