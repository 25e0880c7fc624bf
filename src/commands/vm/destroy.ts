import { Args } from '@oclif/core';
import { destroyDomain, DestroyResult } from '../../manager/lifecycle';
import { BatonCommand } from '../base';

export default class Destroy extends BatonCommand<typeof Destroy> {
  static override summary = 'Stop a domain at once (pull the plug).';

  static override description = `Like virsh destroy: the guest gets no chance to shut down. Baton asks the hypervisor to
quit over its monitor, then sends SIGTERM, then SIGKILL (to its recorded pid, checked against
the process start time). The definition stays; the domain shows as "shut off (destroyed)".
The domain's network namespace is left in place for its next start; its TAP goes away with
the hypervisor. Use vm shutdown for a graceful stop.`;

  static override examples = ['<%= config.bin %> <%= command.id %> demo', '<%= config.bin %> <%= command.id %> demo --json'];

  static override args = {
    domain: Args.string({ description: 'domain name or UUID', required: true }),
  };

  public async run(): Promise<DestroyResult> {
    const result = await destroyDomain(this.store(), this.args.domain);
    if (!this.jsonEnabled()) this.log(`Domain '${result.name}' destroyed`);
    return result;
  }
}
