import { Flags } from '@oclif/core';
import { DEFAULT_KVM_DEVICE, HostProbeReport, ValidationLine, probeHost, validationLines } from '../../host/probe';
import { BatonCommand } from '../base';

/** Where the status column starts, as in virt-host-validate's output. */
const STATUS_COLUMN = 60;

/** `  KVM: checking ring-0 int3 ......................... : FAIL (emulation failure)` */
function formatLine(line: ValidationLine): string {
  const label = `${'KVM'.padStart(6)}: ${line.check} `;
  const dots = label.length < STATUS_COLUMN ? '.'.repeat(STATUS_COLUMN - label.length) : '';
  return `${label}${dots}: ${line.status}${line.note ? ` (${line.note})` : ''}`;
}

export default class Validate extends BatonCommand<typeof Validate> {
  static override summary = "Check what this host's KVM can do for Baton (like virt-host-validate).";

  static override description = `Runs tiny guests on /dev/kvm (a fraction of a second) and reports: ring-0 against ring-3 speed,
whether ring-0 int3, xrstor and lock cmpxchg16b run or end in emulation failures, whether SYSCALL
from ring 3 reaches ring 0, whether the guest's CPUID follows KVM_SET_CPUID2, KVM capabilities
(irqchip, PIT, ioeventfd, irqfd, dirty logging, XSAVE, nested state, TSC control), /dev/net/tun
and /dev/vhost-net, and what that means for Linux guests and Baton's ring-3 test guest.
The report is cached until the next boot; --fresh probes again. Exit status 1 when KVM is
absent or Baton's ring-3 test guest cannot run.`;

  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json', '<%= config.bin %> <%= command.id %> --fresh'];

  static override flags = {
    fresh: Flags.boolean({ description: "probe again instead of using this boot's cached report" }),
    'kvm-device': Flags.string({ description: 'KVM device to probe (reports for other devices are not cached)', default: DEFAULT_KVM_DEVICE }),
  };

  public async run(): Promise<HostProbeReport> {
    const report = await probeHost({ fresh: this.flags.fresh, kvmDevice: this.flags['kvm-device'] });
    if (!this.jsonEnabled()) {
      for (const line of validationLines(report)) this.log(formatLine(line));
    }
    const failure = !report.kvm.present
      ? `KVM is absent: ${report.kvm.detail}; Baton cannot run guests on this host`
      : !report.verdict.ring3Guests ? `Baton's ring-3 test guest cannot run: ${report.verdict.ring3GuestsReason}` : undefined;
    if (failure) {
      // Straight to stderr: oclif silences its log helpers under --json, and stdout stays the report.
      process.stderr.write(`error: ${failure}\n`);
      process.exitCode = 1;
    }
    return report;
  }
}
