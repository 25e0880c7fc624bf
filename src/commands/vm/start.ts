import { Args, Flags } from '@oclif/core';
import { startDomain, StartResult } from '../../manager/lifecycle';
import { runConsole } from './console';
import { BatonError } from '../../util/errors';
import { BatonCommand } from '../base';

export default class Start extends BatonCommand<typeof Start> {
  static override summary = 'Start a defined domain.';

  static override description = `Starts a baton-hv process for the domain in its own session (it keeps running after this
command ends), waits until its monitor answers, sets up the host side of its TAPs (moved into
the network namespace and given the host address named in the domain's Baton metadata), then
lets the guest run. Runtime state goes to the run directory (BATON_RUN_DIR, default /run/baton);
the hypervisor's log and the guest's serial output to the log directory (BATON_LOG_DIR, default
/var/log/baton: <name>.log and <name>.serial.log). Starting a domain that is already running
is an error ("Domain is already active"), as in virsh.`;

  static override examples = [
    '<%= config.bin %> <%= command.id %> demo',
    '<%= config.bin %> <%= command.id %> demo --paused',
    '<%= config.bin %> <%= command.id %> demo --console',
    '<%= config.bin %> <%= command.id %> 5f0c9a3e-7b1d-4c2a-9e61-d3b8a4f2c701 --json',
  ];

  static override args = {
    domain: Args.string({ description: 'domain name or UUID', required: true }),
  };

  static override flags = {
    paused: Flags.boolean({ description: 'leave the guest paused (resume it with vm resume)' }),
    console: Flags.boolean({ description: 'attach to the serial console once started (Ctrl-] leaves; not with --json)' }),
  };

  public async run(): Promise<StartResult> {
    if (this.flags.console && this.jsonEnabled()) throw new BatonError('EUSAGE', '--console and --json cannot be combined: the console would mix guest output into the JSON');
    const store = this.store();
    const result = await startDomain(store, this.args.domain, { paused: this.flags.paused });
    if (!this.jsonEnabled()) this.log(`Domain '${result.name}' started${result.state === 'paused' ? ' (paused)' : ''}`);
    if (this.flags.console) await runConsole(this, store, result.name);
    return result;
  }
}
