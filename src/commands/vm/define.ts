import { Args } from '@oclif/core';
import { defineFromFile } from '../../domain/store';
import { BatonCommand } from '../base';

export default class Define extends BatonCommand<typeof Define> {
  static override summary = 'Define (or update) a domain from an XML file.';

  static override description = `Reads libvirt-compatible domain XML, checks it, and stores it in the state directory
(BATON_STATE_DIR, default /var/lib/baton). Anything Baton does not implement is refused with the
element path and the reason. Kernel and initrd paths may be relative to the XML file's directory;
the stored definition holds absolute paths, and both files must exist now.
Defining a domain again with the same name and <uuid> replaces its definition (as virsh does).`;

  static override examples = [
    '<%= config.bin %> <%= command.id %> domains/demo.xml',
    '<%= config.bin %> <%= command.id %> my-guest.xml --json',
  ];

  static override args = {
    file: Args.string({ description: 'domain XML file', required: true }),
  };

  public async run(): Promise<{ name: string; uuid: string; file: string; replaced: boolean }> {
    const { domain, replaced } = await defineFromFile(this.store(), this.args.file);
    if (!this.jsonEnabled()) this.log(`Domain '${domain.name}' defined from ${this.args.file}`);
    return { name: domain.name, uuid: domain.uuid, file: this.args.file, replaced };
  }
}
