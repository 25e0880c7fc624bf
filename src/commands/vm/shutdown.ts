import { Args, Flags } from '@oclif/core';
import { DEFAULT_SHUTDOWN_TIMEOUT_MS, shutdownDomain, ShutdownResult } from '../../manager/lifecycle';
import { BatonCommand } from '../base';

export default class Shutdown extends BatonCommand<typeof Shutdown> {
  static override summary = 'Ask a domain to power off, and wait until it has.';

  static override description = `Presses the guest's power button (ACPI; QMP system_powerdown) and waits up to --timeout
seconds (default ${DEFAULT_SHUTDOWN_TIMEOUT_MS / 1000}) for the guest to power off. If it does not, the domain is left running
and the command fails (exit status 1) saying so — like virsh, Baton never pulls the plug on its
own — unless --force is given, which then destroys it. --timeout 0 only asks and returns at
once (plain virsh shutdown). A paused domain is refused: resume it first.`;

  static override examples = [
    '<%= config.bin %> <%= command.id %> demo',
    '<%= config.bin %> <%= command.id %> demo --timeout 120',
    '<%= config.bin %> <%= command.id %> demo --timeout 30 --force',
    '<%= config.bin %> <%= command.id %> demo --timeout 0',
  ];

  static override args = {
    domain: Args.string({ description: 'domain name or UUID', required: true }),
  };

  static override flags = {
    timeout: Flags.integer({ description: 'seconds to wait for the guest to power off (0: do not wait)', default: DEFAULT_SHUTDOWN_TIMEOUT_MS / 1000, min: 0 }),
    force: Flags.boolean({ description: 'destroy the domain if it has not powered off when --timeout runs out' }),
  };

  public async run(): Promise<ShutdownResult> {
    const result = await shutdownDomain(this.store(), this.args.domain, { timeoutMs: this.flags.timeout * 1000, force: this.flags.force });
    if (!this.jsonEnabled()) {
      const messages = {
        shutdown: `Domain '${result.name}' has been shut down`,
        requested: `Domain '${result.name}' is being shutdown`,
        destroyed: `Domain '${result.name}' did not shut down within ${this.flags.timeout} s and was destroyed (--force)`,
      };
      this.log(messages[result.outcome]);
    }
    return result;
  }
}
