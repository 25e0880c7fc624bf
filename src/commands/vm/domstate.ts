import { Args, Flags } from '@oclif/core';
import { domainLiveState } from '../../manager/lifecycle';
import { BatonCommand } from '../base';

export default class Domstate extends BatonCommand<typeof Domstate> {
  static override summary = 'Print the state of a domain.';

  static override description = `Prints running, paused or shut off (virsh's words). A domain whose hypervisor died is
shown as "shut off" with reason "crashed": the recorded pid and its start time are checked, so
a dead or reused pid is never taken for a running domain. For a running domain the hypervisor is
asked (QMP query-status): a guest stopped by an internal error shows as "paused (crashed)".`;

  static override examples = ['<%= config.bin %> <%= command.id %> demo', '<%= config.bin %> <%= command.id %> demo --reason', '<%= config.bin %> <%= command.id %> demo --json'];

  static override args = {
    domain: Args.string({ description: 'domain name or UUID', required: true }),
  };

  static override flags = {
    reason: Flags.boolean({ description: 'also print why the domain is in this state, e.g. "shut off (crashed)"' }),
  };

  public async run(): Promise<{ name: string; state: string; reason: string; id: number | null }> {
    const { domain, status } = await domainLiveState(this.store(), this.args.domain);
    if (!this.jsonEnabled()) this.log(this.flags.reason ? `${status.state} (${status.reason})` : status.state);
    return { name: domain.name, state: status.state, reason: status.reason, id: status.id ?? null };
  }
}
