import { Args, Command } from '@oclif/core';
import { attachConsole, ConsoleEnd } from '../../manager/console';
import { DomainStore } from '../../domain/store';
import { BatonCommand } from '../base';

/**
 * Attaches this process's terminal to a domain's console (shared with `vm start --console`).
 * A terminal is put in raw mode, so every key (Ctrl-C included) goes to the guest; Ctrl-] leaves.
 */
export async function runConsole(command: Command, store: DomainStore, nameOrUuid: string): Promise<ConsoleEnd> {
  const session = await attachConsole(store, nameOrUuid, { input: process.stdin, output: process.stdout });
  command.logToStderr(`Connected to domain '${session.name}'\nEscape character is ^] (Ctrl + ])`);
  const tty = process.stdin.isTTY ? process.stdin : undefined;
  tty?.setRawMode(true);
  process.stdin.resume();
  try {
    return await session.ended;
  } finally {
    tty?.setRawMode(false);
    process.stdin.pause();
    // The guest's last line may lack a newline: start ours on a fresh line.
    command.logToStderr('');
  }
}

export default class Console extends BatonCommand<typeof Console> {
  static override summary = "Attach to a running domain's serial console.";

  static override description = `Connects your terminal to the guest's serial port (COM1), as virsh console does: what the
guest prints appears here, what you type goes to the guest. Press Ctrl-] to leave; the domain
keeps running. Several consoles may be attached at once (each sees the output). Everything the
guest prints is also in the log directory (BATON_LOG_DIR, default /var/log/baton), file
<name>.serial.log, whether or not a console is attached.`;

  static override examples = ['<%= config.bin %> <%= command.id %> demo', 'echo ping | <%= config.bin %> <%= command.id %> demo'];

  static override enableJsonFlag = false;

  static override args = {
    domain: Args.string({ description: 'domain name or UUID', required: true }),
  };

  public async run(): Promise<void> {
    await runConsole(this, this.store(), this.args.domain);
  }
}
