import { Args } from '@oclif/core';
import { resumeDomain } from '../../manager/lifecycle';
import { BatonCommand } from '../base';

export default class Resume extends BatonCommand<typeof Resume> {
  static override summary = 'Let a paused domain run again.';

  static override description = `Like virsh resume: continues the vCPUs of a domain paused by vm suspend or started with
vm start --paused (QMP cont). Resuming a running domain changes nothing.`;

  static override examples = ['<%= config.bin %> <%= command.id %> demo', '<%= config.bin %> <%= command.id %> demo --json'];

  static override args = {
    domain: Args.string({ description: 'domain name or UUID', required: true }),
  };

  public async run(): Promise<{ name: string; uuid: string; state: 'running' }> {
    const result = await resumeDomain(this.store(), this.args.domain);
    if (!this.jsonEnabled()) this.log(`Domain '${result.name}' resumed`);
    return result;
  }
}
