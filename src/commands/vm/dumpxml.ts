import { Args } from '@oclif/core';
import { BatonCommand } from '../base';

export default class Dumpxml extends BatonCommand<typeof Dumpxml> {
  static override summary = "Print a domain's definition as XML.";

  static override description = `Prints the stored definition with every default spelled out (UUID, MACs, memory in KiB,
the Baton metadata). The output is libvirt-valid (virt-xml-validate FILE domain) and can be
edited and given back to 'vm define'.`;

  static override examples = ['<%= config.bin %> <%= command.id %> demo', '<%= config.bin %> <%= command.id %> demo > demo.xml'];

  static override args = {
    domain: Args.string({ description: 'domain name or UUID', required: true }),
  };

  public async run(): Promise<{ name: string; xml: string }> {
    const store = this.store();
    const domain = store.get(this.args.domain);
    const xml = store.dumpXml(domain.name);
    // The XML ends with one newline, which this.log adds back.
    if (!this.jsonEnabled()) this.log(xml.replace(/\n$/, ''));
    return { name: domain.name, xml };
  }
}
