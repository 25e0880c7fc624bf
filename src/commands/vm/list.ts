import { Flags } from '@oclif/core';
import { listDomains, DomainListEntry } from '../../domain/store';
import { BatonCommand } from '../base';

/** virsh's table: a leading space, columns three spaces apart, a dashed rule under the header. */
function formatTable(rows: DomainListEntry[]): string {
  const table = [['Id', 'Name', 'State'], ...rows.map((r) => [r.id === null ? '-' : String(r.id), r.name, r.state])];
  const widths = [0, 1, 2].map((col) => Math.max(...table.map((row) => row[col].length)));
  const lines = table.map((row) => (' ' + row.map((cell, col) => (col === 2 ? cell : cell.padEnd(widths[col]))).join('   ')).trimEnd());
  const ruleLength = widths.reduce((sum, w) => sum + w, 0) + 3 * (widths.length - 1) + 2;
  return [lines[0], '-'.repeat(ruleLength), ...lines.slice(1)].join('\n');
}

export default class List extends BatonCommand<typeof List> {
  static override summary = 'List domains.';

  static override description = `Like virsh list: running and paused domains by default, every defined domain with --all.
Inactive domains show "-" as Id. --json prints name, uuid, id, state and reason for scripts.`;

  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --all', '<%= config.bin %> <%= command.id %> --all --json'];

  static override flags = {
    all: Flags.boolean({ description: 'include shut-off domains' }),
  };

  public async run(): Promise<DomainListEntry[]> {
    const entries = listDomains(this.store(), { all: this.flags.all });
    if (!this.jsonEnabled()) this.log(formatTable(entries));
    return entries;
  }
}
