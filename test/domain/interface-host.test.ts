import { BatonError } from '../../src/util/errors';
import { BATON_XMLNS, parseDomainXml, serializeDomainXml } from '../../src/domain/xml';
import { virtXmlValidate } from './helpers';

/**
 * `<baton:interface dev netns hostAddress>`: where the manager puts the host end of a managed
 * TAP (a network namespace) and which address it gets there.
 */
function domainXml(options: { metadata: string; managed?: 'yes' | 'no' }): string {
  return `<domain type='kvm'>
  <name>host-side</name>
  <metadata><baton:domain xmlns:baton='${BATON_XMLNS}'>${options.metadata}</baton:domain></metadata>
  <memory unit='MiB'>128</memory>
  <os><type>hvm</type><kernel>/k</kernel></os>
  <devices>
    <interface type='ethernet'><mac address='52:54:00:00:00:01'/><target dev='bt-hs0' managed='${options.managed ?? 'yes'}'/></interface>
    <interface type='ethernet'><mac address='52:54:00:00:00:02'/><target dev='bt-hs1'/></interface>
  </devices>
</domain>`;
}

function refusal(xml: string): BatonError {
  try {
    parseDomainXml(xml);
  } catch (err) {
    if (err instanceof BatonError) return err;
    throw err;
  }
  throw new Error('expected the XML to be refused');
}

describe('Baton interface metadata: netns and hostAddress', () => {
  it('parses netns and hostAddress onto the interface, with or without a migration policy', () => {
    const domain = parseDomainXml(domainXml({
      metadata: "<baton:interface dev='bt-hs0' netns='baton-demo' hostAddress='10.99.0.1/24'/><baton:interface dev='bt-hs1' network='new-tap' netns='bt-ns.2'/>",
    }));
    expect(domain.interfaces[0]).toMatchObject({ tapName: 'bt-hs0', netns: 'baton-demo', hostAddress: '10.99.0.1/24' });
    expect(domain.interfaces[0].migrationPolicy).toBeUndefined();
    expect(domain.interfaces[1]).toMatchObject({ tapName: 'bt-hs1', netns: 'bt-ns.2', migrationPolicy: 'new-tap' });
    expect(domain.interfaces[1].hostAddress).toBeUndefined();
  });

  it('serializes them back, stably, as libvirt-valid XML', () => {
    const domain = parseDomainXml(domainXml({ metadata: "<baton:interface dev='bt-hs0' netns='baton-demo' hostAddress='10.99.0.1/24'/>" }));
    const xml = serializeDomainXml(domain);
    expect(xml).toContain(`<baton:interface dev="bt-hs0" netns="baton-demo" hostAddress="10.99.0.1/24"/>`);
    expect(parseDomainXml(xml)).toEqual(domain);
    expect(serializeDomainXml(parseDomainXml(xml))).toBe(xml);
    const validation = virtXmlValidate(xml, 'interface-host');
    if (validation) expect(validation).toEqual({ ok: true, output: expect.stringContaining('validates') });
  });

  it.each([
    ["<baton:interface dev='bt-hs0' netns='bad/name'/>", 'EXMLINVALID', "@netns: 'bad/name' is not a usable network namespace name"],
    ["<baton:interface dev='bt-hs0' netns='..'/>", 'EXMLINVALID', "'..' is not a usable network namespace name"],
    ["<baton:interface dev='bt-hs0' hostAddress='10.99.0.1'/>", 'EXMLINVALID', "@hostAddress: '10.99.0.1' is not an IPv4 address with prefix length"],
    ["<baton:interface dev='bt-hs0' hostAddress='10.99.0.256/24'/>", 'EXMLINVALID', 'is not an IPv4 address with prefix length'],
    ["<baton:interface dev='bt-hs0' hostAddress='10.99.0.1/33'/>", 'EXMLINVALID', 'is not an IPv4 address with prefix length'],
    ["<baton:interface dev='bt-hs0' hostAddress='fd00::1/64'/>", 'EXMLINVALID', 'is not an IPv4 address with prefix length'],
    ["<baton:interface dev='bt-hs0'/>", 'EXMLINVALID', "says nothing; give at least one of 'network', 'netns', 'hostAddress'"],
    ["<baton:interface dev='bt-hs0' netns='a' gateway='10.0.0.1'/>", 'EXMLUNSUPPORTED', '@gateway: attribute is not supported; allowed: dev, network, netns, hostAddress'],
    ["<baton:interface dev='bt-hs0' netns='a'/><baton:interface dev='bt-hs0' hostAddress='10.0.0.1/8'/>", 'EXMLINVALID', "interface 'bt-hs0' is described twice"],
    ["<baton:interface dev='bt-nope' netns='a'/>", 'EXMLINVALID', "no <interface> has <target dev='bt-nope'/>"],
  ])('refuses %s', (metadata, code, message) => {
    const err = refusal(domainXml({ metadata }));
    expect(err.code).toBe(code);
    expect(err.message).toContain(message);
  });

  it("refuses netns or hostAddress on a managed='no' TAP (Baton does not rewire TAPs it did not create)", () => {
    for (const attr of ["netns='ns1'", "hostAddress='10.0.0.1/24'"]) {
      const err = refusal(domainXml({ metadata: `<baton:interface dev='bt-hs0' ${attr}/>`, managed: 'no' }));
      expect(err.code).toBe('EXMLINVALID');
      expect(err.message).toContain("interface 'bt-hs0' has managed='no'; netns and hostAddress apply only to TAPs Baton manages");
    }
  });
});
