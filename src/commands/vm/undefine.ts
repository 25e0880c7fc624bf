import { Args } from '@oclif/core';
import { BatonCommand } from '../base';

export default class Undefine extends BatonCommand<typeof Undefine> {
  static override summary = 'Remove the definition of a shut-off domain.';

  static override description = `Deletes the domain's XML from the state directory; its logs stay in the log directory.
A running or paused domain is refused: stop it first. (virsh would turn it into a transient
domain; Baton has no transient domains, so it keeps the definition instead.)`;

  static override examples = ['<%= config.bin %> <%= command.id %> demo', '<%= config.bin %> <%= command.id %> 7d0f6a8e-2f7c-4b5e-9a51-0c8d1e2f3a4b'];

  static override args = {
    domain: Args.string({ description: 'domain name or UUID', required: true }),
  };

  public async run(): Promise<{ name: string; uuid: string }> {
    const domain = await this.store().undefine(this.args.domain);
    if (!this.jsonEnabled()) this.log(`Domain '${domain.name}' has been undefined`);
    return { name: domain.name, uuid: domain.uuid };
  }
}
