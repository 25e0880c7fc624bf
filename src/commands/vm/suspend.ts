import { Args } from '@oclif/core';
import { suspendDomain } from '../../manager/lifecycle';
import { BatonCommand } from '../base';

export default class Suspend extends BatonCommand<typeof Suspend> {
  static override summary = "Pause a running domain's vCPUs.";

  static override description = `Like virsh suspend: the guest stops executing (QMP stop) and keeps its memory and devices;
packets sent to it wait in its TAP's queue. vm resume continues it. Suspending a paused domain
changes nothing.`;

  static override examples = ['<%= config.bin %> <%= command.id %> demo', '<%= config.bin %> <%= command.id %> demo --json'];

  static override args = {
    domain: Args.string({ description: 'domain name or UUID', required: true }),
  };

  public async run(): Promise<{ name: string; uuid: string; state: 'paused' }> {
    const result = await suspendDomain(this.store(), this.args.domain);
    if (!this.jsonEnabled()) this.log(`Domain '${result.name}' suspended`);
    return result;
  }
}
