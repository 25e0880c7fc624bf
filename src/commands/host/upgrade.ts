import { Flags } from '@oclif/core';
import { upgradeHost, UpgradeResult } from '../../manager/upgrade';
import { BatonError } from '../../util/errors';
import { BatonCommand } from '../base';

export default class Upgrade extends BatonCommand<typeof Upgrade> {
  static override summary = 'Move running domains onto the installed hypervisor build, live.';

  static override description = [
    "Every running domain whose baton-hv build differs from the installed one moves to a fresh baton-hv of the installed build with 'vm migrate --local': its TAPs and RAM are handed over as open file descriptors, so the guest pauses for milliseconds and loses no packet.",
    'A domain whose migration fails keeps running on its old process; the command then exits 1 after trying the others. systemd/baton-upgrade.path runs this when the installed build changes.',
  ].join('\n\n');

  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --dry-run --json'];

  static override flags = {
    'dry-run': Flags.boolean({ description: 'only list the domains that would move' }),
  };

  public async run(): Promise<UpgradeResult> {
    const result = await upgradeHost(this.store(), {
      dryRun: this.flags['dry-run'],
      onProgress: (line) => { if (!this.jsonEnabled()) this.logToStderr(`upgrade: ${line}`); },
    });
    if (!this.jsonEnabled()) {
      this.log(`installed hypervisor build ${result.installedBuild}`);
      for (const d of result.domains) {
        this.log(d.outcome === 'upgraded'
          ? `Domain '${d.name}' upgraded (${d.fromBuild} -> ${d.toBuild}), pause ${d.pauseMs} ms, pid ${d.oldPid} -> ${d.newPid}`
          : d.outcome === 'would-upgrade' ? `Domain '${d.name}' would move from ${d.fromBuild}` : `Domain '${d.name}' NOT upgraded: ${d.error}`);
      }
      if (!result.domains.length) this.log(`nothing to upgrade (${result.upToDate.length} running domain(s) up to date)`);
    }
    const failed = result.domains.filter((d) => d.outcome === 'failed');
    if (failed.length) {
      throw new BatonError('EUPGRADE', `${failed.length} domain(s) could not be upgraded (${failed.map((d) => d.name).join(', ')}); they keep running on their old hypervisor`, { result });
    }
    return result;
  }
}
