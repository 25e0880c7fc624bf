import { Args, Flags, ux } from '@oclif/core';
import { DEFAULT_MIGRATE_TIMEOUT_MS, migrateDomain, MigrateResult, NETWORK_POLICIES, NetworkPolicy } from '../../manager/migrate';
import { BatonError } from '../../util/errors';
import { BatonCommand } from '../base';

export default class Migrate extends BatonCommand<typeof Migrate> {
  static override summary = 'Move a running domain to a new hypervisor process on this host.';

  // One line per paragraph: oclif wraps them to the terminal.
  static override description = [
    "Starts a new baton-hv for the domain in incoming mode, moves the running guest into it and retires the old process. The domain keeps its name, UUID, id, monitor and console sockets and its 'vm list' entry; only the hypervisor pid changes. Guest RAM is handed over by its file descriptor (nothing is copied), so the guest pauses only for its device and vCPU state.",
    "How each NIC's TAP moves is the domain's network migration policy (<baton:migration network=...> and per-interface overrides in its XML; 'auto' means local-fd on one host):",
    'local-fd: the open TAP itself travels to the new process (SCM_RIGHTS): same TAP, same ifindex, nothing re-plumbed, no packet lost.',
    "new-tap: the new process opens a new TAP, set up beforehand next to the old one (network namespace, MAC, MTU); as the guest pauses, the addresses and bridge port move to it; the old TAP ends with the old process.",
    'netpass: on one host, new-tap plus the frames that reach the old TAP during the pause, buffered by the old process and replayed to the guest in the new one.',
    '--local forces local-fd, --policy picks one for every NIC. A failed migration leaves the domain running in its old process, untouched. --json prints pause_ms (the guest\'s pause as the hypervisor measured it), total_ms, policy, old_pid and new_pid, among others.',
  ].join('\n\n');

  static override examples = [
    '<%= config.bin %> <%= command.id %> demo --local',
    '<%= config.bin %> <%= command.id %> demo',
    '<%= config.bin %> <%= command.id %> demo --policy new-tap',
    '<%= config.bin %> <%= command.id %> demo --local --json',
  ];

  static override args = {
    domain: Args.string({ description: 'domain name or UUID', required: true }),
  };

  static override flags = {
    local: Flags.boolean({ description: 'migrate on this host handing the TAP fds over (policy local-fd for every NIC)' }),
    policy: Flags.option({ description: "network migration policy for every NIC (default: the domain's)", options: NETWORK_POLICIES })(),
    timeout: Flags.integer({ description: 'seconds for starting the destination and completing the migration', default: DEFAULT_MIGRATE_TIMEOUT_MS / 1000, min: 1 }),
  };

  public async run(): Promise<MigrateResult> {
    if (this.flags.local && this.flags.policy !== undefined && this.flags.policy !== 'local-fd') {
      throw new BatonError('EUSAGE', `--local means policy local-fd; it cannot be combined with --policy ${this.flags.policy}`);
    }
    const policy: NetworkPolicy | undefined = this.flags.local ? 'local-fd' : this.flags.policy;
    // A spinner on a terminal; one line per step otherwise (logs, scripts). Never with --json.
    const spinner = !this.jsonEnabled() && process.stderr.isTTY === true;
    const lines = !this.jsonEnabled() && !spinner;
    if (spinner) ux.action.start(`Migrating domain '${this.args.domain}'`, 'planning');
    let result: MigrateResult;
    try {
      result = await migrateDomain(this.store(), this.args.domain, {
        policy,
        timeoutMs: this.flags.timeout * 1000,
        onProgress: (progress) => {
          if (spinner) ux.action.status = progress.message;
          if (lines) this.logToStderr(`migrate: ${progress.message}`);
        },
      });
    } catch (err) {
      if (spinner) ux.action.stop('failed');
      throw err;
    }
    if (spinner) ux.action.stop('done');
    if (!this.jsonEnabled()) {
      const taps = result.nics.map((nic) => (nic.tap === nic.previousTap ? `${nic.device}: ${nic.tap} handed over` : `${nic.device}: ${nic.previousTap} → ${nic.tap}`));
      this.log(
        `Domain '${result.name}' migrated (${result.policy}): guest paused ${result.pause_ms} ms, migration ${result.total_ms} ms, baton-hv pid ${result.old_pid} → ${result.new_pid}${taps.length ? `; ${taps.join(', ')}` : ''}`,
      );
    }
    return result;
  }
}
